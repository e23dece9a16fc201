// The "Upload data source" dialog: pick a CSV/TSV/JSON file, say what it holds, optionally
// feed it into a node of the plan. It reads the file and hands it over; app.js sends it.

import { $, describeError, h } from "./ui.js";

const FORMATS = { csv: "csv", tsv: "tsv", tab: "tsv", json: "json" };

export function guessFormat(filename) {
  const ext = filename.split(".").pop()?.toLowerCase() ?? "";
  return FORMATS[ext] ?? null;
}

/** What a file most likely holds, from its format and first line. */
export function guessDataType(format, text) {
  if (format === "json") return "graph";
  const header = (text.split(/\r?\n/, 1)[0] ?? "").toLowerCase();
  const columns = header.split(format === "tsv" ? "\t" : ",").map((c) => c.trim().replace(/^"|"$/g, ""));
  if (columns.includes("source") && columns.includes("target")) return "edges";
  if (!columns.includes("id") && columns.includes("layer")) return "layers";
  return "nodes";
}

export class UploadDialog {
  /** @param {(upload: {filename, fileFormat, dataType, name, content, feedInto}) => Promise<void>} onSubmit */
  constructor(dialog, onSubmit) {
    this.dialog = dialog;
    this.onSubmit = onSubmit;
    this.form = $("form", dialog);
    this.file = $("#upload-file", dialog);
    this.name = $("#upload-name", dialog);
    this.type = $("#upload-type", dialog);
    this.target = $("#upload-target", dialog);
    this.error = $("#upload-error", dialog);
    this.submit = $("#upload-submit", dialog);
    this.text = null;
    this.file.addEventListener("change", () => this.#picked());
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.#send();
    });
    $("#upload-cancel", dialog).addEventListener("click", () => dialog.close());
  }

  /** @param {{id: string, label: string}[]} targets nodes a data source can feed */
  open(targets) {
    this.form.reset();
    this.text = null;
    this.#setError(null);
    this.target.replaceChildren(
      h("option", { value: "" }, "— nothing (a node of its own) —"),
      ...targets.map((t) => h("option", { value: t.id }, t.label === t.id ? t.id : `${t.label} (${t.id})`)),
    );
    this.submit.disabled = false;
    this.dialog.showModal();
    this.file.focus();
  }

  async #picked() {
    const file = this.file.files?.[0];
    this.#setError(null);
    if (!file) return;
    const format = guessFormat(file.name);
    if (!format) {
      this.#setError(`${file.name}: choose a .csv, .tsv or .json file`);
      return;
    }
    this.text = await file.text();
    if (!this.name.value) this.name.value = file.name.replace(/\.[^.]+$/, "");
    this.type.value = guessDataType(format, this.text);
  }

  async #send() {
    const file = this.file.files?.[0];
    if (!file) return this.#setError("Choose a file first.");
    const fileFormat = guessFormat(file.name);
    if (!fileFormat) return this.#setError(`${file.name}: choose a .csv, .tsv or .json file`);
    const name = this.name.value.trim();
    if (!name) return this.#setError("Give the data source a name.");
    this.submit.disabled = true;
    this.#setError(null);
    try {
      await this.onSubmit({
        filename: file.name,
        fileFormat,
        dataType: this.type.value,
        name,
        content: this.text ?? (await file.text()),
        feedInto: this.target.value || null,
      });
      this.dialog.close();
    } catch (err) {
      this.#setError(`Upload failed: ${describeError(err)}`);
    } finally {
      this.submit.disabled = false;
    }
  }

  #setError(text) {
    this.error.textContent = text ?? "";
    this.error.hidden = !text;
  }
}

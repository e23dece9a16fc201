// The API token: remembered in this browser (localStorage), sent in connection_init as
// {"authorization": "Bearer <token>"} when set, asked for when the server refuses (4403).

import { $ } from "./ui.js";

const KEY = "planpulse.token";

export function storedToken() {
  try {
    return localStorage.getItem(KEY) ?? "";
  } catch {
    return ""; // storage disabled: the token lives for this page only
  }
}

function storeToken(token) {
  try {
    if (token) localStorage.setItem(KEY, token);
    else localStorage.removeItem(KEY);
  } catch {
    /* storage disabled */
  }
}

export function initPayload(token) {
  return token ? { authorization: `Bearer ${token}` } : {};
}

export class TokenDialog {
  /** @param {(token: string) => void} onChange called with the new token ("" = none) */
  constructor(dialog, onChange) {
    this.dialog = dialog;
    this.onChange = onChange;
    this.input = $("#token-input", dialog);
    this.reason = $("#token-reason", dialog);
    $("form", dialog).addEventListener("submit", (e) => {
      e.preventDefault();
      this.#save(this.input.value.trim());
    });
    $("#token-clear", dialog).addEventListener("click", () => this.#save(""));
    $("#token-cancel", dialog).addEventListener("click", () => dialog.close());
  }

  /** @param {string|null} reason why it is asked (shown above the field), null when opened by hand */
  open(reason = null) {
    this.reason.textContent = reason ?? "";
    this.reason.hidden = !reason;
    this.input.value = storedToken();
    if (!this.dialog.open) this.dialog.showModal();
    this.input.focus();
    this.input.select();
  }

  #save(token) {
    storeToken(token);
    this.dialog.close();
    this.onChange(token);
  }
}

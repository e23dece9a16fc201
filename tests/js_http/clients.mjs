// The real JavaScript clients against planpulse, unmodified, each as an app would use it:
//
//   node clients.mjs apollo <http-url> <ws-url>   Apollo Client 4: HttpLink + GraphQLWsLink split
//   node clients.mjs sse <http-url> <stream-url>  graphql-sse's createClient (distinct connections)
//
// Each creates a project, subscribes with the frontend's document, prints `SUBSCRIBED <id>`,
// waits for a `GO` line on stdin (the test checks the server has the subscription), creates
// a data source, and prints one JSON line per event until the badge reaches `completed`.
// Exit codes: 0 done, 1 on any error (reason on stderr), 2 when 30 s pass first.

import readline from 'node:readline';

const VERBATIM_SUBSCRIPTION = `
subscription NodeExecutionStatusChanged($projectId: Int!) {
  nodeExecutionStatusChanged(projectId: $projectId) {
    projectId
    nodeId
    nodeType
    datasourceExecution { dataSourceId filename status processedAt executionState errorMessage }
    graphExecution { graphId nodeCount edgeCount executionState computedDate errorMessage }
    timestamp
  }
}
`;
const CREATE_PROJECT = 'mutation($name: String!) { createProject(input: {name: $name}) { id name } }';
const CREATE_SOURCE = `
mutation($input: CreateDataSourceInput!) {
  createDataSource(input: $input) { id status executionState }
}
`;
const NODES_CSV = 'id,label,layer\nweb,Web frontend,app\napi,API,app\ndb,Database,data\n';

const [mode, httpUrl, streamUrl] = process.argv.slice(2);
setTimeout(() => { process.stderr.write('timed out after 30 s\n'); process.exit(2); }, 30_000);

function fail(err) {
  process.stderr.write(`${err?.stack ?? JSON.stringify(err)}\n`);
  process.exit(1);
}

const go = new Promise((resolve) => {
  readline.createInterface({ input: process.stdin }).on('line', (l) => { if (l === 'GO') resolve(); });
});

function sourceInput(projectId) {
  return {
    projectId, name: 'Services', filename: 'services.csv', fileFormat: 'csv',
    dataType: 'nodes', content: NODES_CSV,
  };
}

function onEvent(event, done) {
  process.stdout.write(`${JSON.stringify(event)}\n`);
  if (event.datasourceExecution?.executionState === 'completed') done();
}

async function apollo() {
  const { ApolloClient, ApolloLink, HttpLink, InMemoryCache, gql } = await import('@apollo/client');
  const { GraphQLWsLink } = await import('@apollo/client/link/subscriptions');
  const { getMainDefinition } = await import('@apollo/client/utilities');
  const { createClient } = await import('graphql-ws');
  const { default: WebSocket } = await import('ws');
  const wsClient = createClient({ url: streamUrl, webSocketImpl: WebSocket });
  const link = ApolloLink.split(
    ({ query }) => {
      const def = getMainDefinition(query);
      return def.kind === 'OperationDefinition' && def.operation === 'subscription';
    },
    new GraphQLWsLink(wsClient),
    new HttpLink({ uri: httpUrl }),
  );
  const client = new ApolloClient({ link, cache: new InMemoryCache() });
  const created = await client.mutate({ mutation: gql(CREATE_PROJECT), variables: { name: 'apollo' } });
  const projectId = Number(created.data.createProject.id);
  await new Promise((resolve, reject) => {
    const sub = client
      .subscribe({ query: gql(VERBATIM_SUBSCRIPTION), variables: { projectId } })
      .subscribe({
        next: (result) => {
          if (result.error) reject(result.error);
          else onEvent(result.data.nodeExecutionStatusChanged, () => { sub.unsubscribe(); resolve(); });
        },
        error: reject,
      });
    const connected = () => {
      process.stdout.write(`SUBSCRIBED ${projectId}\n`);
      go.then(() => client.mutate({ mutation: gql(CREATE_SOURCE), variables: { input: sourceInput(projectId) } }))
        .catch(reject);
    };
    wsClient.on('connected', connected);
  });
  await wsClient.dispose();
}

async function sse() {
  const { createClient } = await import('graphql-sse');
  const client = createClient({ url: streamUrl });
  const once = (query, variables) =>
    new Promise((resolve, reject) => {
      let value;
      client.subscribe({ query, variables }, {
        next: (v) => { value = v; },
        error: reject,
        complete: () => (value?.errors ? reject(value.errors) : resolve(value.data)),
      });
    });
  const created = await once(CREATE_PROJECT, { name: 'sse' });
  const projectId = Number(created.createProject.id);
  await new Promise((resolve, reject) => {
    let dispose = () => {};
    dispose = client.subscribe({ query: VERBATIM_SUBSCRIPTION, variables: { projectId } }, {
      next: (result) => {
        if (result.errors) reject(result.errors);
        else onEvent(result.data.nodeExecutionStatusChanged, () => { dispose(); resolve(); });
      },
      error: reject,
      complete: () => {},
    });
    process.stdout.write(`SUBSCRIBED ${projectId}\n`);
    go.then(() => once(CREATE_SOURCE, { input: sourceInput(projectId) })).catch(reject);
  });
  client.dispose();
}

try {
  if (mode === 'apollo') await apollo();
  else if (mode === 'sse') await sse();
  else fail(new Error(`unknown mode ${mode}`));
  process.exit(0);
} catch (err) {
  fail(err);
}

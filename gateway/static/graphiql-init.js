// GraphiQL on planpulse: queries and mutations by POST /graphql, subscriptions over the
// graphql-transport-ws WebSocket at /graphql (graphql-ws's client). A token typed into the
// Headers pane as {"Authorization": "Bearer <token>"} goes with both.
(function () {
  const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/graphql`;
  let headers = {};
  const wsClient = graphqlWs.createClient({
    url: wsUrl,
    lazy: true,
    connectionParams: () => headers,
  });
  const base = GraphiQL.createFetcher({ url: `${location.origin}/graphql`, wsClient });
  const fetcher = (params, options) => {
    headers = (options && options.headers) || {};
    return base(params, options);
  };
  // ?query=…&variables=… open with that operation (a link can carry one).
  const url = new URLSearchParams(location.search);
  const root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(
    React.createElement(GraphiQL, {
      fetcher,
      defaultQuery: '{ projects { id name } }\n',
      query: url.get('query') || undefined,
      variables: url.get('variables') || undefined,
      shouldPersistHeaders: false,
    }),
  );
})();

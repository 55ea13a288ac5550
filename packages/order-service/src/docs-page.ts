/*
 * `GET /docs`: the contracts as one page a person can read, drawn on the server from the same
 * documents `GET /openapi.json` and `GET /asyncapi.json` answer: no script, nothing fetched from
 * elsewhere (a documentation UI from a CDN would not load where the service runs offline).
 */

type Json = Record<string, unknown>;

const escape = (text: unknown) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const schema = (value: unknown) => `<pre>${escape(JSON.stringify(value, null, 2))}</pre>`;

function httpSection(openapi: Json): string {
  const paths = openapi.paths as Record<string, Json & { servers?: { description?: string }[] }>;
  const parts: string[] = [];
  for (const [path, item] of Object.entries(paths)) {
    const servedBy = (item.servers ?? []).map((server) => server.description).join(', ');
    for (const method of ['get', 'post'] as const) {
      const operation = item[method] as Json | undefined;
      if (!operation) continue;
      const parameters = (operation.parameters as Json[] | undefined) ?? [];
      const body = (operation.requestBody as { content: Record<string, { schema: unknown }> } | undefined)
        ?.content['application/json']?.schema;
      const answers = Object.entries(operation.responses as Record<string, Json>)
        .map(([status, answer]) => {
          const content = answer.content as Record<string, { schema?: unknown }> | undefined;
          const [type, media] = Object.entries(content ?? {})[0] ?? [];
          return `<li><b>${escape(status)}</b> ${escape(answer.description)}${type ? ` <code>${escape(type)}</code>` : ''}${media?.schema ? `<details><summary>body</summary>${schema(media.schema)}</details>` : ''}</li>`;
        })
        .join('');
      parts.push(`<section id="${escape(`${method}-${path}`)}">
<h3><code>${method.toUpperCase()} ${escape(path)}</code> <small>${escape(servedBy)}</small></h3>
<p>${escape(operation.summary)}${operation.description ? ` ${escape(operation.description)}` : ''}</p>
${parameters.length ? `<p>Parameters: ${parameters.map((p) => `<code>${escape(p.name)}</code> (${escape(p.in)}${p.required ? ', required' : ''})`).join(', ')}</p><details><summary>parameters</summary>${schema(parameters)}</details>` : ''}
${body ? `<details><summary>request body</summary>${schema(body)}</details>` : ''}
<ul>${answers}</ul>
</section>`);
    }
  }
  return parts.join('\n');
}

function streamSection(asyncapi: Json): string {
  const channels = asyncapi.channels as Record<string, Json>;
  const messages = (asyncapi.components as { messages: Record<string, Json> }).messages;
  const operations = asyncapi.operations as Record<string, Json & { channel: { $ref: string } }>;
  return Object.entries(channels)
    .map(([name, channel]) => {
      const groups = (channel['x-consumer-groups'] as { group: string; service: string }[] | undefined) ?? [];
      const senders = Object.entries(operations)
        .filter(([, op]) => op.action === 'send' && op.channel.$ref === `#/channels/${name}`)
        .map(([id]) => id.split('.')[0]);
      const retry = Object.values(operations).find(
        (op) => op.action === 'receive' && op.channel.$ref === `#/channels/${name}`,
      )?.['x-retry-policy'];
      const kinds = Object.keys(channel.messages as Json)
        .map(
          (type) =>
            `<details><summary><code>${escape(type)}</code></summary>${schema(messages[type]?.payload)}</details>`,
        )
        .join('');
      return `<section id="${escape(name)}">
<h3><code>${escape(name)}</code></h3>
<p>${escape(channel.description)}</p>
<p>Written by: ${senders.map((s) => `<code>${escape(s)}</code>`).join(', ') || 'nobody'}.${groups.length ? ` Read by: ${groups.map((g) => `<code>${escape(g.group)}</code> (${escape(g.service)})`).join(', ')}.` : ''}${channel['x-dead-letter-stream'] ? ` Dead letters: <code>${escape(channel['x-dead-letter-stream'])}</code>.` : ''}</p>
${retry ? `<details><summary>retry policy</summary>${schema(retry)}</details>` : ''}
${kinds}
</section>`;
    })
    .join('\n');
}

/** The page, from the two documents. */
export function docsPage(openapi: Json, asyncapi: Json): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>redis-streams-msa: HTTP routes and event streams</title>
<style>
body { font: 15px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222 }
code, pre { font: 13px ui-monospace, monospace } pre { background: #f6f6f6; padding: .5rem; overflow: auto }
h3 small { font-weight: normal; color: #666 } section { border-top: 1px solid #ddd; padding-top: .5rem }
</style>
</head>
<body>
<h1>redis-streams-msa</h1>
<p>The documents themselves: <a href="/openapi.json">OpenAPI 3.1</a> (HTTP routes), <a href="/asyncapi.json">AsyncAPI 3.0</a> (streams).</p>
<h2>HTTP routes</h2>
${httpSection(openapi)}
<h2>Event streams</h2>
${streamSection(asyncapi)}
</body>
</html>
`;
}

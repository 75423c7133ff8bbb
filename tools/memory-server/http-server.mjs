// A Memory MCP server over streamable HTTP, for the tests of SPARC_MEMORY_MCP_URL:
// @modelcontextprotocol/server-memory speaks only stdio, so this serves its knowledge-graph tools
// (create_entities, create_relations, search_nodes, with the same semantics) through the same
// SDK's streamable-HTTP transport, keeping the graph in memory. PORT says where; it prints
// `listening` once it is.
import http from 'node:http';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { z } from 'zod';

const entities = new Map();
const relations = [];
const Entity = z.object({ name: z.string(), entityType: z.string(), observations: z.array(z.string()) });
const Relation = z.object({ from: z.string(), to: z.string(), relationType: z.string() });
const result = value => ({ content: [{ type: 'text', text: JSON.stringify(value) }], structuredContent: value });

function server() {
  const mcp = new McpServer({ name: 'memory-http', version: '0' });
  mcp.registerTool('create_entities', { inputSchema: { entities: z.array(Entity) } }, async ({ entities: given }) => {
    const added = given.filter(e => !entities.has(e.name));
    added.forEach(e => entities.set(e.name, e));
    return result({ entities: added });
  });
  mcp.registerTool('create_relations', { inputSchema: { relations: z.array(Relation) } }, async ({ relations: given }) => {
    relations.push(...given);
    return result({ relations: given });
  });
  mcp.registerTool('search_nodes', { inputSchema: { query: z.string() } }, async ({ query }) => {
    const q = query.toLowerCase();
    const found = [...entities.values()].filter(e => e.name.toLowerCase().includes(q)
      || e.entityType.toLowerCase().includes(q) || e.observations.some(o => o.toLowerCase().includes(q)));
    return result({ entities: found, relations: [] });
  });
  return mcp;
}

// Stateless: a server and a transport per request, answering JSON rather than SSE.
http.createServer(async (req, res) => {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const body = chunks.length ? JSON.parse(Buffer.concat(chunks).toString()) : undefined;
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: true });
  const mcp = server();
  res.on('close', () => { transport.close(); mcp.close(); });
  await mcp.connect(transport);
  await transport.handleRequest(req, res, body);
}).listen(Number(process.env.PORT), '127.0.0.1', () => process.stdout.write('listening\n'));

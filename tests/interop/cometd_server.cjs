'use strict';
/*
 * Hosts the CometD project's own Node server (cometd-nodejs-server, long-polling only) for the
 * interop tests, plus a small JSON control API on the same port:
 *
 *   POST /control/publish  {"channel": "/v2/me/outbound", "data": {...}}
 *        -> {"subscribers": <sessions subscribed to that channel>}
 *   POST /control/drop     -> {"dropped": <sessions>, "generation": <n>}
 *        Simulates a server restart: the CometD server instance is replaced by a fresh one (so every
 *        Bayeux session is gone, as after a GWS node restart) and the long polls in flight are cut.
 *   POST /control/strip-cookie {"on": true|false}
 *        While on, the BAYEUX_BROWSER cookie is removed from incoming Bayeux requests (a proxy
 *        that loses it): handshakes succeed, every later message gets 402::session_unknown.
 *   GET  /control/stats    -> counters and a short request log (see `stats` below)
 *
 * Usage: node cometd_server.cjs [--host 127.0.0.1] [--port 0] [--path /api/v2/notifications]
 *                               [--timeout 10000]
 * Prints one JSON line {"event":"ready","port":N,...} on stdout once listening. Exits when stdin is
 * closed (the test process died) or on SIGTERM.
 */
const http = require('node:http');
const cometd = require('cometd-nodejs-server');

function parseArgs(argv) {
    const args = {host: '127.0.0.1', port: 0, path: '/api/v2/notifications', timeout: 10000};
    for (let i = 0; i < argv.length; i += 2) {
        const key = argv[i].replace(/^--/, '');
        const value = argv[i + 1];
        if (!(key in args) || value === undefined) {
            throw new Error(`bad argument ${argv[i]}`);
        }
        args[key] = typeof args[key] === 'number' ? Number(value) : value;
    }
    return args;
}

const args = parseArgs(process.argv.slice(2));

const stats = {
    generation: 0,      // incremented by every /control/drop
    handshakes: 0,      // sessions created (all generations)
    sessions: 0,        // live sessions in the current generation
    subscribes: [],     // {generation, channel, session}
    errors: [],         // Bayeux replies that carried an "error" field: {generation, channel, error}
    requests: [],       // last Bayeux requests: {generation, channels, cookie}
};

let stripCookie = false;
let server = null;        // current CometDServer instance
const inFlight = new Set();  // Bayeux HTTP responses not finished yet

function newCometDServer() {
    const generation = stats.generation;
    const s = cometd.createCometDServer({timeout: args.timeout, logLevel: 'info'});
    s.addListener('sessionAdded', () => {
        stats.handshakes += 1;
        stats.sessions += 1;
    });
    s.addListener('sessionRemoved', () => {
        if (generation === stats.generation) {
            stats.sessions -= 1;
        }
    });
    s.addListener('subscribed', (channel, session) => {
        stats.subscribes.push({generation, channel: channel.name, session: session.id});
    });
    s.addExtension({
        outgoing: (srv, sender, session, message, callback) => {
            if (message.error) {
                stats.errors.push({generation, channel: message.channel, error: message.error});
            }
            callback(undefined, message);
        },
    });
    return s;
}

function readJson(request) {
    return new Promise((resolve, reject) => {
        let body = '';
        request.setEncoding('utf8');
        request.on('data', chunk => {
            body += chunk;
        });
        request.on('end', () => {
            try {
                resolve(body ? JSON.parse(body) : {});
            } catch (e) {
                reject(e);
            }
        });
        request.on('error', reject);
    });
}

function reply(response, status, body) {
    response.statusCode = status;
    response.setHeader('Content-Type', 'application/json');
    response.end(JSON.stringify(body));
}

async function control(request, response, route) {
    if (request.method === 'POST' && route === '/control/publish') {
        const body = await readJson(request);
        if (typeof body.channel !== 'string') {
            reply(response, 400, {error: 'channel missing'});
            return;
        }
        const channel = server.createServerChannel(body.channel);
        const subscribers = channel.subscribers.length;
        channel.publish(null, body.data, () => reply(response, 200, {subscribers}));
    } else if (request.method === 'POST' && route === '/control/drop') {
        const dropped = stats.sessions;
        const old = server;
        stats.generation += 1;
        stats.sessions = 0;
        server = newCometDServer();
        old.close();
        for (const pending of inFlight) {
            pending.destroy();
        }
        inFlight.clear();
        reply(response, 200, {dropped, generation: stats.generation});
    } else if (request.method === 'POST' && route === '/control/strip-cookie') {
        const body = await readJson(request);
        stripCookie = body.on === true;
        reply(response, 200, {on: stripCookie});
    } else if (request.method === 'GET' && route === '/control/stats') {
        reply(response, 200, stats);
    } else {
        reply(response, 404, {error: `no route ${request.method} ${route}`});
    }
}

server = newCometDServer();

const httpServer = http.createServer((request, response) => {
    const route = new URL(request.url, 'http://x').pathname;
    // The CometD JavaScript client appends the message type to the URL by default
    // (appendMessageTypeToURL: <path>/handshake, <path>/connect, ...), as servlet mappings allow.
    if (route === args.path || route.startsWith(args.path + '/')) {
        if (stripCookie && request.headers.cookie) {
            request.headers.cookie = request.headers.cookie
                .split(';')
                .filter(c => c.trim().split('=')[0] !== 'BAYEUX_BROWSER')
                .join(';');
        }
        let channels = [];
        const log = () => {
            stats.requests.push({
                generation: stats.generation,
                channels,
                cookie: request.headers.cookie || null,
            });
            if (stats.requests.length > 200) {
                stats.requests.shift();
            }
        };
        // Peek at the body for the request log without consuming it for the CometD server:
        // cometd-nodejs-server accepts an already parsed body in request.body.
        readJson(request).then(messages => {
            channels = Array.isArray(messages) ? messages.map(m => m.channel) : [];
            log();
            request.body = messages;
            inFlight.add(response);
            response.on('close', () => inFlight.delete(response));
            server.handle(request, response);
        }, () => {
            log();
            reply(response, 400, {error: 'bad json'});
        });
    } else if (route.startsWith('/control/')) {
        control(request, response, route).catch(e => reply(response, 500, {error: String(e)}));
    } else {
        reply(response, 404, {error: 'not found'});
    }
});
// Node's own request timeout must exceed the CometD long-poll timeout.
httpServer.requestTimeout = 0;
httpServer.timeout = 0;

httpServer.listen(args.port, args.host, () => {
    const address = httpServer.address();
    process.stdout.write(JSON.stringify({
        event: 'ready', host: address.address, port: address.port, path: args.path,
    }) + '\n');
});

function shutdown() {
    server.close();
    for (const pending of inFlight) {
        pending.destroy();
    }
    httpServer.close();
    process.exit(0);
}

process.stdin.on('end', shutdown);
process.stdin.on('close', shutdown);
process.stdin.resume();
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

/*
 * The CometD project's own JavaScript client (npm "cometd", run in Node through
 * "cometd-nodejs-client"), used by the interop tests as a reference Bayeux client.
 *
 * Usage: node cometd_client.mjs --url URL [--cookie "NAME=VALUE; NAME2=VALUE2"]
 *                               [--headers '{"X-CSRF-TOKEN": "..."}'] [--append-message-type true]
 *                               [--channel /v2/me/outbound] [--count 1] [--timeout 15000]
 *
 * --append-message-type is CometD's appendMessageTypeToURL option, true by default in the CometD
 * JavaScript client: requests then go to URL/handshake, URL/connect, URL/subscribe, ...
 *
 * Prints JSON lines on stdout:
 *   {"event":"ready","clientId":...}         handshake and subscription both succeeded
 *   {"event":"message","channel":...,"data":...}  one per message received on the channel
 *   {"event":"meta","channel":...,"successful":false,"error":...}  an unsuccessful meta reply
 *   {"event":"done","received":N} / {"event":"timeout","received":N}  just before exiting
 * Exit codes: 0 after --count messages, 2 on timeout, 3 when handshake or subscribe fails.
 * Also exits when stdin is closed (the test process died).
 *
 * Cookies: cometd-nodejs-client keeps the cookies that the Bayeux server sets, in memory, per host.
 * A cookie obtained by another client (the JSESSIONID of a REST login) is passed through the
 * CometD "requestHeaders" configuration: the adapter's XMLHttpRequest.setRequestHeader() stores a
 * "Cookie" header in its own jar and send() joins it with the server-set cookies into one Cookie
 * header (node_modules/cometd-nodejs-client/src/XMLHttpRequest.js).
 */
import {adapt} from 'cometd-nodejs-client';
import {CometD} from 'cometd';

function parseArgs(argv) {
    const args = {
        url: '', cookie: '', headers: '{}', 'append-message-type': 'true',
        channel: '/v2/me/outbound', count: 1, timeout: 15000,
    };
    for (let i = 0; i < argv.length; i += 2) {
        const key = argv[i].replace(/^--/, '');
        const value = argv[i + 1];
        if (!(key in args) || value === undefined) {
            throw new Error(`bad argument ${argv[i]}`);
        }
        args[key] = typeof args[key] === 'number' ? Number(value) : value;
    }
    if (!args.url) {
        throw new Error('--url is required');
    }
    return args;
}

const args = parseArgs(process.argv.slice(2));

function emit(obj) {
    process.stdout.write(JSON.stringify(obj) + '\n');
}

adapt();
const cometd = new CometD();
// Long-polling only, as batch-cancel uses it (GWS WebSocket support varies by deployment).
for (const type of cometd.getTransportTypes()) {
    if (type !== 'long-polling') {
        cometd.unregisterTransport(type);
    }
}
const requestHeaders = JSON.parse(args.headers);
if (args.cookie) {
    requestHeaders.Cookie = args.cookie;
}
cometd.configure({
    url: args.url,
    requestHeaders,
    appendMessageTypeToURL: args['append-message-type'] !== 'false',
    logLevel: 'info',
});

let received = 0;
let finished = false;

function describe(reply) {
    const failure = reply.failure || {};
    return {
        error: reply.error || null,
        httpCode: failure.httpCode === undefined ? null : failure.httpCode,
        reason: failure.reason ? String(failure.reason) : null,
    };
}

function finish(event, code, details) {
    if (finished) {
        return;
    }
    finished = true;
    emit({event, received, ...(details || {})});
    clearTimeout(timer);
    // Do not wait for the /meta/disconnect round trip: the test only needs the output.
    cometd.disconnect();
    setTimeout(() => process.exit(code), 50);
}

const timer = setTimeout(() => finish('timeout', 2), args.timeout);

for (const meta of ['/meta/handshake', '/meta/connect', '/meta/subscribe']) {
    cometd.addListener(meta, message => {
        if (!message.successful) {
            emit({event: 'meta', channel: meta, successful: false, ...describe(message)});
        }
    });
}

cometd.handshake(reply => {
    if (!reply.successful) {
        finish('handshake_failed', 3, describe(reply));
        return;
    }
    cometd.subscribe(args.channel, message => {
        received += 1;
        emit({event: 'message', channel: message.channel, data: message.data});
        if (received >= args.count) {
            finish('done', 0);
        }
    }, subscribeReply => {
        if (subscribeReply.successful) {
            emit({event: 'ready', clientId: cometd.getClientId()});
        } else {
            finish('subscribe_failed', 3, describe(subscribeReply));
        }
    });
});

process.stdin.on('end', () => finish('stdin_closed', 1));
process.stdin.resume();

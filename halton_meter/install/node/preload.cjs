// Halton Meter: route Node's built-in fetch through HTTPS_PROXY (the meter's edge).
//
// Loaded with NODE_OPTIONS="--require <this file>" by `halton-meter run` and the --apps
// environment. Node 20 and 22 ignore HTTPS_PROXY in fetch (Node 24 honours it only with
// NODE_USE_ENV_PROXY=1), so SDK scripts (`openai`, `@anthropic-ai/sdk`) would bypass the
// meter. This file never throws and never changes a program that manages its proxy itself:
//
// - nothing happens unless HTTPS_PROXY/HTTP_PROXY is set and fetch is Node's own;
// - tools that configure their proxy themselves (Claude Code, Gemini CLI, the Codex
//   launcher) are left alone, and so is a program that installed its own dispatcher;
// - the work is lazy: Node's internal undici (~60 ms to load) is touched on the first
//   fetch() call only, so node processes that never fetch pay nothing;
// - where it cannot apply it prints one line on stderr and fetch goes on unproxied.
//
// Mechanism: undici (behind Node's fetch) reads its dispatcher from
// globalThis[Symbol.for('undici.globalDispatcher.1')]. On the first fetch, the default
// Agent found there is replaced by an Agent of the same class whose `connect` opens a
// CONNECT tunnel through the proxy (then TLS to the origin, trusting NODE_EXTRA_CA_CERTS as
// Node's default TLS context does). NO_PROXY hosts connect directly.
'use strict';

(function haltonMeterFetchPreload() {
  const MARK = Symbol.for('halton-meter.fetch-preload');
  const DISPATCHER = Symbol.for('undici.globalDispatcher.1');
  const CONNECT_TIMEOUT_MS = 10000;
  // Tools that read the proxy variables themselves (and ship their own proxy agent).
  const SELF_PROXIED = [
    '@anthropic-ai/claude-code',
    '@google/gemini-cli',
    '@openai/codex',
  ];

  function notice(reason) {
    try {
      process.stderr.write(`halton-meter: Node fetch is not routed through the meter (${reason})\n`);
    } catch (_) {
      // stderr closed: nothing to do
    }
  }

  function proxyFor(protocol) {
    const env = process.env;
    const https = env.HTTPS_PROXY || env.https_proxy;
    const http = env.HTTP_PROXY || env.http_proxy;
    return protocol === 'http:' ? http || https : https || http;
  }

  function bypassed(host, port) {
    const list = process.env.NO_PROXY || process.env.no_proxy || '';
    const h = String(host).toLowerCase().replace(/^\[|\]$/g, '');
    for (const raw of list.split(/[\s,]+/)) {
      let entry = raw.trim().toLowerCase();
      if (!entry) continue;
      if (entry === '*') return true;
      let entryPort = null;
      const m = entry.match(/^(.*):(\d+)$/);
      if (m && !entry.includes('::')) {
        entry = m[1];
        entryPort = Number(m[2]);
      }
      entry = entry.replace(/^\[|\]$/g, '').replace(/^\*?\./, '.');
      if (entryPort !== null && entryPort !== Number(port)) continue;
      if (h === entry || (entry.startsWith('.') && (h.endsWith(entry) || h === entry.slice(1)))) {
        return true;
      }
      if (!entry.startsWith('.') && h.endsWith('.' + entry)) return true;
    }
    return false;
  }

  function selfProxiedTool() {
    const main = process.argv[1] || '';
    let real = main;
    try {
      real = require('fs').realpathSync(main);
    } catch (_) {
      // not a file (node -e, REPL): not a known tool
    }
    return SELF_PROXIED.some((name) => main.includes(name) || real.includes(name));
  }

  function nativeEnvProxy() {
    // Node 24+ (and 22.21+) route fetch through the proxy variables themselves when asked.
    if (process.env.NODE_USE_ENV_PROXY !== '1') return false;
    const [major, minor] = process.versions.node.split('.').map(Number);
    return major >= 24 || (major === 22 && minor >= 21);
  }

  function tunnelConnect(net, tls) {
    return function connect(opts, callback) {
      const https = opts.protocol === 'https:';
      const host = opts.hostname;
      const port = Number(opts.port) || (https ? 443 : 80);
      const servername = opts.servername || (net.isIP(host) ? undefined : host);
      let finished = false;
      const finish = (err, socket) => {
        if (finished) return;
        finished = true;
        callback(err, err ? undefined : socket);
      };
      const secure = (raw) => {
        if (!https) {
          raw.setTimeout(0);
          finish(null, raw);
          return;
        }
        const sock = tls.connect({ socket: raw, servername, ALPNProtocols: ['http/1.1'] });
        sock.once('secureConnect', () => {
          raw.setTimeout(0);
          finish(null, sock);
        });
        sock.once('error', (err) => {
          raw.destroy();
          finish(err);
        });
      };
      const proxyText = bypassed(host, port) ? null : proxyFor(opts.protocol);
      if (!proxyText) {
        const raw = net.connect({ host, port });
        raw.setTimeout(CONNECT_TIMEOUT_MS, () => raw.destroy(new Error('connect timeout')));
        raw.once('error', (err) => finish(err));
        raw.once('connect', () => secure(raw));
        return;
      }
      const proxy = new URL(proxyText.includes('://') ? proxyText : `http://${proxyText}`);
      const raw = net.connect({ host: proxy.hostname.replace(/^\[|\]$/g, ''), port: Number(proxy.port) || 80 });
      raw.setTimeout(CONNECT_TIMEOUT_MS, () => raw.destroy(new Error('proxy connect timeout')));
      raw.once('error', (err) => finish(err));
      const authority = `${net.isIPv6(host) ? `[${host}]` : host}:${port}`;
      raw.once('connect', () => {
        let head = `CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n`;
        if (proxy.username) {
          // The edge reads a project from the user part (`run --project`).
          const cred = Buffer.from(`${proxy.username}:${proxy.password}`).toString('base64');
          head += `Proxy-Authorization: Basic ${cred}\r\n`;
        }
        raw.write(head + '\r\n');
      });
      let buffered = Buffer.alloc(0);
      const onData = (chunk) => {
        buffered = Buffer.concat([buffered, chunk]);
        const end = buffered.indexOf('\r\n\r\n');
        if (end < 0) {
          if (buffered.length > 65536) raw.destroy(new Error('proxy answer too long'));
          return;
        }
        raw.removeListener('data', onData);
        const status = Number(buffered.toString('latin1', 0, end).split(' ')[1]);
        if (status !== 200) {
          raw.destroy();
          finish(new Error(`proxy refused CONNECT ${authority}: HTTP ${status}`));
          return;
        }
        const rest = buffered.subarray(end + 4);
        if (rest.length) raw.unshift(rest);
        secure(raw);
      };
      raw.on('data', onData);
    };
  }

  function optionsOf(agent) {
    for (const sym of Object.getOwnPropertySymbols(agent)) {
      if (sym.description === 'options') return agent[sym] || {};
    }
    return null;
  }

  function install() {
    // Loads Node's internal undici, which puts its default Agent in place if none is set.
    void globalThis.Headers;
    const current = globalThis[DISPATCHER];
    if (!current || typeof current.dispatch !== 'function') {
      notice('no undici dispatcher in this Node version');
      return;
    }
    if (current[MARK]) return;
    const options = optionsOf(current);
    const Agent = current.constructor;
    // Only the stock default is replaced: any other dispatcher (ProxyAgent, a configured
    // Agent, a mock) belongs to the program.
    if (!Agent || Agent.name !== 'Agent' || options === null || options.connect || options.interceptors) {
      return;
    }
    const agent = new Agent({ connect: tunnelConnect(require('net'), require('tls')) });
    Object.defineProperty(agent, MARK, { value: true });
    globalThis[DISPATCHER] = agent;
  }

  try {
    if (globalThis[MARK]) return; // required twice
    Object.defineProperty(globalThis, MARK, { value: true });
    if (!proxyFor('https:')) return;
    if (selfProxiedTool() || nativeEnvProxy()) return;
    const original = globalThis.fetch;
    if (typeof original !== 'function') {
      notice(`Node ${process.versions.node} has no built-in fetch`);
      return;
    }
    const descriptor = Object.getOwnPropertyDescriptor(globalThis, 'fetch') || {
      writable: true,
      enumerable: true,
      configurable: true,
    };
    let installed = false;
    const fetch = function fetch(input, init) {
      if (!installed) {
        installed = true;
        try {
          install();
        } catch (err) {
          notice(err && err.message ? err.message : String(err));
        }
      }
      return original.call(this, input, init);
    };
    Object.defineProperty(globalThis, 'fetch', {
      value: fetch,
      writable: descriptor.writable !== false,
      enumerable: descriptor.enumerable !== false,
      configurable: descriptor.configurable !== false,
    });
  } catch (err) {
    notice(err && err.message ? err.message : String(err));
  }
})();

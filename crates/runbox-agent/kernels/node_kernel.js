// runbox javascript kernel: one node process per code context, driven by the agent.
//
// Protocol: fd 3 is a unix socket to the agent (a /bin/sh trampoline moved it there from
// fd 0 and put /dev/null on fd 0). Requests arrive as "<id> <byte length>\n<utf-8 code>";
// events go back as JSON lines: ready, result, error, done. fds 1 and 2 are pipes the agent
// reads itself; node writes to pipes synchronously, so output precedes the event after it.
//
// Cells run with vm.Script#runInThisContext: one realm for the kernel, the user's code and
// every required module (so `instanceof Array` and friends behave), and top-level
// var/let/const/function declarations persist across scripts of that context.
'use strict';

const vm = require('vm');
const util = require('util');
const net = require('net');

const stringify = JSON.stringify;
const inspect = util.inspect;
const ctl = new net.Socket({ fd: 3, readable: true, writable: true });

let inbuf = Buffer.alloc(0);
let busy = false;
let count = 0;
let interruptPending = null;

function send(event) {
  ctl.write(stringify(event) + '\n');
}

function frames(stack) {
  // Drop the kernel's own frames (node:vm, the -e driver) so users see their code.
  return String(stack)
    .split('\n')
    .filter((line) => !/\(node:|\[eval\]|at node:|node:internal/.test(line));
}

function errorEvent(err) {
  if (err instanceof Error || (err && typeof err === 'object' && 'stack' in err)) {
    let ename = err.name || 'Error';
    if (err.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED') ename = 'KeyboardInterrupt';
    return { ev: 'error', ename, evalue: String(err.message), traceback: frames(err.stack) };
  }
  const text = inspect(err);
  return { ev: 'error', ename: 'Error', evalue: text, traceback: ['Uncaught ' + text] };
}

function runSync(code, filename) {
  const script = new vm.Script(code, { filename });
  return script.runInThisContext({ breakOnSigint: true, displayErrors: false });
}

const KEYWORD_START = /^(let|const|var|function|async\s+function|class|if|for|while|do|switch|try|return|throw|import|export|break|continue)\b|^[}\])]|^\/[/*]/;

// `await` at top level: run the cell as an async function. Simple top-level declarations
// (`const x = ...`, `function f`) become globals so they persist, and the last line, when it
// looks like an expression, is returned as the cell's value.
function asyncSource(code) {
  const original = code.split('\n');
  const lines = original.map((line) =>
    line
      .replace(/^(?:let|const|var)\s+([A-Za-z_$][\w$]*)\s*=/, 'globalThis.$1 =')
      .replace(/^(async\s+)?function(\s*\*?\s*)([A-Za-z_$][\w$]*)/, 'globalThis.$3 = $1function$2$3'),
  );
  let last = lines.length - 1;
  while (last >= 0 && lines[last].trim() === '') last--;
  const plain = '(async () => {' + lines.join('\n') + '\n})()';
  if (last < 0 || /^\s/.test(original[last]) || KEYWORD_START.test(original[last])) return [plain];
  const expr = lines[last].replace(/;\s*$/, '');
  const withReturn = lines.slice(0, last).concat(['return (' + expr + ');'], lines.slice(last + 1));
  return ['(async () => {' + withReturn.join('\n') + '\n})()', plain];
}

async function runAsync(code, filename) {
  let script = null;
  let firstError = null;
  for (const source of asyncSource(code)) {
    try {
      script = new vm.Script(source, { filename });
      break;
    } catch (e) {
      firstError = firstError || e;
    }
  }
  if (script === null) throw firstError;
  const promise = script.runInThisContext({ breakOnSigint: true, displayErrors: false });
  return await new Promise((resolve, reject) => {
    interruptPending = () => {
      const e = new Error('Script execution was interrupted by `SIGINT`');
      e.code = 'ERR_SCRIPT_EXECUTION_INTERRUPTED';
      reject(e);
    };
    Promise.resolve(promise).then(resolve, reject);
  }).finally(() => {
    interruptPending = null;
  });
}

async function runCell(id, code) {
  busy = true;
  count += 1;
  const filename = '<cell-' + count + '>';
  try {
    const value = /\bawait\b/.test(code) ? await runAsync(code, filename) : runSync(code, filename);
    if (value !== undefined) send({ ev: 'result', data: { text: inspect(value) } });
  } catch (e) {
    send(errorEvent(e));
  }
  send({ ev: 'done', id });
  busy = false;
  pump();
}

function pump() {
  if (busy) return;
  const nl = inbuf.indexOf(10);
  if (nl < 0) return;
  const [id, length] = inbuf.subarray(0, nl).toString().split(' ').map(Number);
  if (inbuf.length < nl + 1 + length) return;
  const code = inbuf.subarray(nl + 1, nl + 1 + length).toString('utf8');
  inbuf = inbuf.subarray(nl + 1 + length);
  runCell(id, code);
}

ctl.on('data', (chunk) => {
  inbuf = Buffer.concat([inbuf, chunk]);
  pump();
});
ctl.on('end', () => process.exit(0));
ctl.on('error', () => process.exit(0));

// SIGINT outside a synchronous script (those break on their own): abandon an awaited cell,
// and never let an interrupt kill the kernel.
process.on('SIGINT', () => {
  if (interruptPending) interruptPending();
});
process.on('uncaughtException', (e) => {
  process.stderr.write('Uncaught ' + (e && e.stack ? e.stack : inspect(e)) + '\n');
});
process.on('unhandledRejection', (e) => {
  process.stderr.write('Unhandled rejection: ' + (e && e.stack ? e.stack : inspect(e)) + '\n');
});

globalThis.require = require;
send({ ev: 'ready' });

// Runs inside the sandbox: loads the handler from /bundle, talks to the runner over fds 3/4.
import fs from "node:fs";
import net from "node:net";
import readline from "node:readline";

const CHUNK = 500;

class FatalError extends Error {
  constructor(message) { super(message); this.name = "FatalError"; }
}
class QueryError extends Error {
  constructor(message) { super(message); this.name = "QueryError"; }
}

function send(msg) {
  fs.writeSync(3, JSON.stringify(msg) + "\n");
}

// A socket over the pipe (not fs.createReadStream): non-blocking, so exit never waits on it.
const channel = new net.Socket({ fd: 4, readable: true, writable: false });
const lines = readline.createInterface({ input: channel });
const iterator = lines[Symbol.asyncIterator]();
async function nextLine() {
  const { value, done } = await iterator.next();
  if (done) throw new Error("runner channel closed");
  return JSON.parse(value);
}

function makeContext(meta) {
  let nextId = 0;
  const log = (level) => (message) => send({ type: "log", level, message: String(message).slice(0, 2000) });
  return {
    taskId: meta.task_id, task_id: meta.task_id, attempt: meta.attempt,
    FatalError, QueryError,
    logger: { info: log("info"), warning: log("warning"), error: log("error") },
    log: { info: log("info"), warning: log("warning"), error: log("error") },
    // Queries are answered in order: the shim waits for each answer before the next call.
    // query(sql) reads the granted relations by name; query(datasetId, sql) also reads
    // that dataset as `dataset`.
    async query(datasetId, sql, limit = 1000) {
      if (sql === undefined || typeof sql === "number") {
        limit = sql === undefined ? 1000 : sql;
        sql = datasetId;
        datasetId = null;
      }
      nextId += 1;
      const id = datasetId === null ? null : String(datasetId);
      send({ type: "query", id: nextId, dataset_id: id, sql, limit });
      const answer = await nextLine();
      if (!answer.ok) throw new QueryError(answer.error || "query failed");
      return answer.result;
    },
  };
}

async function main() {
  const init = await nextLine();
  const dot = init.entrypoint.lastIndexOf(".");
  const moduleName = init.entrypoint.slice(0, dot);
  const funcName = init.entrypoint.slice(dot + 1);
  try {
    const dir = init.bundle_dir ?? "/bundle";
    const mod = await import(`${dir}/${moduleName.replaceAll(".", "/")}.mjs`);
    const handler = mod[funcName] ?? mod.default?.[funcName];
    if (typeof handler !== "function") throw new FatalError(`no function ${funcName} in ${moduleName}`);
    let result = await handler(init.event, makeContext(init.context));
    if (result === undefined || result === null) result = [];
    if (!Array.isArray(result)) throw new FatalError("handler must return an array of records");
    for (let i = 0; i < result.length; i += CHUNK) send({ type: "records", rows: result.slice(i, i + CHUNK) });
    send({ type: "done" });
  } catch (err) {
    const fatal = err instanceof FatalError || err?.name === "FatalError";
    process.stderr.write(String(err?.stack ?? err) + "\n");
    send({ type: "error", fatal, error: `${err?.name ?? "Error"}: ${err?.message ?? err}`.slice(0, 2000) });
  }
  process.exit(0);
}

main();

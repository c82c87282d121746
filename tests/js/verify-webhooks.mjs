// Verifies captured Trace deliveries with the npm `standardwebhooks` library, as a
// TypeScript/JavaScript receiver would. Run from tools/ (where the package is installed).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(`${process.cwd()}/`);
const { Webhook } = require("standardwebhooks");

const input = JSON.parse(readFileSync(process.argv[2], "utf8"));
const wh = new Webhook(input.secret);
let verified = 0;
for (const d of input.deliveries) {
  const event = wh.verify(d.body, d.headers); // throws on a bad signature or a stale timestamp
  if (event.type !== "alert.fired") throw new Error("unexpected event type");
  verified += 1;
}
let tamperedRejected = false;
try {
  wh.verify(input.tampered.body, input.tampered.headers);
} catch {
  tamperedRejected = true;
}
console.log(JSON.stringify({ verified, tampered_rejected: tamperedRejected }));

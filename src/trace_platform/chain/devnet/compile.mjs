// Compile one Solidity file offline with solc-js; prints {abi, bytecode} of the named contract.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const [, , toolsDir, file, contract] = process.argv;
const require = createRequire(toolsDir + "/package.json");
const solc = require("solc");
const input = {
  language: "Solidity",
  sources: { [file]: { content: readFileSync(file, "utf8") } },
  settings: { optimizer: { enabled: true, runs: 200 }, outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } } },
};
const out = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (out.errors || []).filter((e) => e.severity === "error");
if (errors.length) {
  console.error(errors.map((e) => e.formattedMessage).join("\n"));
  process.exit(1);
}
const c = out.contracts[file][contract];
console.log(JSON.stringify({ abi: c.abi, bytecode: "0x" + c.evm.bytecode.object }));

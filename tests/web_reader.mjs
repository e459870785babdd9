// Test helper: node web_reader.mjs TEXTS.json OUT.json writes, for each plan text of the JSON array in
// TEXTS.json, whether web/ditfa_plan.js's parsePlan accepts it (true) or refuses it (false).
import { readFileSync, writeFileSync } from "node:fs";
import { parsePlan } from "../web/ditfa_plan.js";

const texts = JSON.parse(readFileSync(process.argv[2], "utf8"));
writeFileSync(process.argv[3], JSON.stringify(texts.map((t) => parsePlan(t).plan !== undefined)));

// Writes matter.js's test PAA certificates (DER) into a directory, for the chip SDK controller's
// paaTrustStorePath, so it can commission matter.js devices (their DAC chains end at these test PAAs).
// Usage: node export_paa.mjs OUTDIR
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { TestCert_PAA_FFF1_Cert, TestCert_PAA_NoVID_Cert } from "@matter/protocol";

const out = process.argv[2];
if (!out) {
    console.error("usage: node export_paa.mjs OUTDIR");
    process.exit(2);
}
mkdirSync(out, { recursive: true });
const paas = { "fff1": TestCert_PAA_FFF1_Cert, "novid": TestCert_PAA_NoVID_Cert };
for (const [name, der] of Object.entries(paas)) {
    writeFileSync(join(out, `matterjs-test-paa-${name}.der`), Buffer.from(der));
}
console.log(Object.keys(paas).length);

// matter.js as an independent Matter OTA image implementation for otagw's codec tests.
//
// Usage: node ota_image_writer.mjs JOBS.json
// JOBS.json is an array of jobs, run in order (one node start for many checks keeps the tests fast):
//   {"op": "write", "payload": "<file>", "out": "<file>", "options": {vendorId, productId, softwareVersion,
//        softwareVersionString, minApplicableSoftwareVersion?, maxApplicableSoftwareVersion?,
//        releaseNotesUrl?, imageDigestType? ("SHA-256" | "SHA-384" | "SHA-512" | "SHA3-256")}}
//     -> OtaImageWriter.create(); writes the image to "out".
//   {"op": "read", "file": "<file>", "chunk": 1000}
//     -> OtaImageReader.file() with the payload digest check, streaming the file in chunks.
// Prints one JSON array with one result per job: {"ok": true, ...} or {"ok": false, "error": "<message>"}.

import { readFileSync, writeFileSync } from "node:fs";
import * as nodeCrypto from "node:crypto";
import { NodeJsStyleCrypto } from "@matter/general";
import { OtaImageReader, OtaImageWriter } from "@matter/protocol";

const crypto = new NodeJsStyleCrypto(nodeCrypto);

function toJson(value) {
    if (typeof value === "bigint") return value.toString();
    if (value instanceof Uint8Array) return Buffer.from(value).toString("hex");
    if (Array.isArray(value)) return value.map(toJson);
    if (value !== null && typeof value === "object") {
        return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toJson(v)]));
    }
    return value;
}

function streamOf(bytes, chunk) {
    let position = 0;
    return new ReadableStream({
        pull(controller) {
            if (position >= bytes.length) {
                controller.close();
                return;
            }
            controller.enqueue(bytes.subarray(position, position + chunk));
            position += chunk;
        },
    });
}

async function write(job) {
    const payload = new Uint8Array(readFileSync(job.payload));
    const result = await OtaImageWriter.create(crypto, { ...job.options, payload });
    writeFileSync(job.out, result.image);
    return { size: result.image.byteLength, fullFileChecksum: result.fullFileChecksum };
}

async function read(job) {
    const bytes = new Uint8Array(readFileSync(job.file));
    const header = await OtaImageReader.file(
        streamOf(bytes, job.chunk ?? 1024).getReader(),
        crypto,
        bytes.length,
        { calculateFullChecksum: false }, // the full-file checksum path skips the payload digest check
    );
    return { header: toJson(header) };
}

const jobs = JSON.parse(readFileSync(process.argv[2], "utf8"));
const results = [];
for (const job of jobs) {
    try {
        const run = job.op === "write" ? write : job.op === "read" ? read : null;
        if (run === null) throw new Error(`unknown op ${job.op}`);
        results.push({ ok: true, ...(await run(job)) });
    } catch (error) {
        results.push({ ok: false, error: `${error?.constructor?.name}: ${error?.message ?? error}` });
    }
}
process.stdout.write(JSON.stringify(results) + "\n");

// A matter.js device with the OTA Software Update Requestor: the independent Matter peer for otagw's provider tests.
//
// Usage: node ota_requestor_device.mjs --dir DIR [--port 5540] [--vendor-id 0xFFF1] [--product-id 0x8000]
//        [--version 1] [--version-string 1.0] [--passcode 20202021] [--discriminator 3840] [--reboot-exit]
//        [--idle-interval-ms N]   (a sleepy device: MRP idle interval N ms in its session parameters)
//        [--battery-percent N]    (a battery device: Power Source cluster with the BAT feature on endpoint 1, charge
//                                  N %; writing a number to DIR/battery-percent changes the charge at runtime and
//                                  across restarts)
//
// Prints one JSON object per line on stdout, prefixed "OTAGW-EVENT ", for the test driving it:
//   {"event":"ready","version":N,"manualPairingCode":"...","qrPairingCode":"...","port":P,"commissioned":bool}
//   {"event":"update-state","state":S,"progress":P}
//   {"event":"applied","version":N,"sha256":"...","size":BYTES,"path":"..."}   (downloaded image saved to DIR)
//   {"event":"restarted","version":N}
// "Applying" an update stops the node and starts it again from the same storage with the new SoftwareVersion,
// as a real device does after a reboot; the requestor then reports VersionApplied / NotifyUpdateApplied itself.
// With --reboot-exit the "reboot" is a real process exit (code 75) instead: the driver starts the script again with
// the same arguments and the new process reports {"event":"restarted"} (an in-process restart can hang when an
// aborted BDX attempt still holds matter.js's storage lock).
//
// With OTA_FAST=1 the spec-allowed random waits (announce jitter 1–600 s, etc.) collapse to their minimum so
// tests do not wait minutes (Math.random() is pinned to 0 in this process only).
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync, existsSync, rmSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";

import { Environment, ServerNode, VendorId } from "@matter/main";
import { OtaSoftwareUpdateRequestorServer } from "@matter/main/behaviors/ota-software-update-requestor";
import { PowerSourceServer } from "@matter/main/behaviors/power-source";
import { OnOffLightDevice } from "@matter/main/devices/on-off-light";

const { values: args } = parseArgs({
    options: {
        dir: { type: "string" },
        port: { type: "string", default: "5540" },
        "vendor-id": { type: "string", default: "0xFFF1" },
        "product-id": { type: "string", default: "0x8000" },
        version: { type: "string", default: "1" },
        "version-string": { type: "string", default: "" },
        passcode: { type: "string", default: "20202021" },
        discriminator: { type: "string", default: "3840" },
        "reboot-exit": { type: "boolean", default: false },
        // a sleepy (Thread-like) device: its session idle interval in ms (MRP SII), e.g. 5000; 0 = matter.js default
        "idle-interval-ms": { type: "string", default: "0" },
        // a battery-powered device at this charge (%); empty: no Power Source cluster at all
        "battery-percent": { type: "string", default: "" },
    },
});
if (!args.dir) {
    console.error("--dir is required");
    process.exit(2);
}
if (process.env.OTA_FAST === "1") Math.random = () => 0;
// matter.js 0.17.9: when a provider aborts a BDX download, a pending write of the download's file stream can land
// after the stream was destroyed and surface as an unhandled 'error' event that kills the process. A device
// survives that (the requestor retries the download); only that one error is tolerated here.
process.on("uncaughtException", error => {
    if (error?.code === "ERR_STREAM_DESTROYED") {
        console.error("tolerated after an aborted BDX download:", error.message);
        return;
    }
    console.error(error);
    process.exit(1);
});

const dir = args.dir;
mkdirSync(dir, { recursive: true });
const versionFile = join(dir, "installed-version.json");
// matter.js logs to stdout too: event lines carry a prefix the driver filters on.
const emit = obj => process.stdout.write("OTAGW-EVENT " + JSON.stringify(obj) + "\n");

function installedVersion() {
    if (existsSync(versionFile)) return JSON.parse(readFileSync(versionFile, "utf8"));
    const version = Number(args.version);
    return { version, versionString: args["version-string"] || `${version}.0` };
}

let restartRequested = null;

class TestOtaRequestor extends OtaSoftwareUpdateRequestorServer {
    async applyUpdate(newSoftwareVersion, fileDesignator) {
        const blob = await fileDesignator.openBlob();
        const bytes = new Uint8Array(await blob.arrayBuffer());
        const path = join(dir, `applied-${newSoftwareVersion}.ota`);
        writeFileSync(path, bytes);
        const sha256 = createHash("sha256").update(bytes).digest("hex");
        emit({ event: "applied", version: newSoftwareVersion, sha256, size: bytes.length, path });
        writeFileSync(
            versionFile,
            JSON.stringify({ version: newSoftwareVersion, versionString: `${newSoftwareVersion}.0` }),
        );
        if (args["reboot-exit"]) {
            // Power-cycle right here, as a real device does when it installs: no graceful shutdown (after an
            // aborted BDX attempt matter.js 0.17.9's requestor can livelock in its progress reactor afterwards,
            // starving timers, so nothing later in this process can be relied on).
            writeFileSync(rebootMarker, "1");
            if (typeof process.reallyExit === "function") process.reallyExit(75);
            process.exit(75);
        }
        // "Reboot" after the command returns: the main loop below stops and restarts the node.
        restartRequested?.();
    }
}

Environment.default.vars.set("storage.path", join(dir, "storage"));

async function startNode() {
    const { version, versionString } = installedVersion();
    const node = await ServerNode.create(ServerNode.RootEndpoint.with(TestOtaRequestor), {
        id: "otagw-test-device",
        network: { port: Number(args.port) },
        commissioning: { passcode: Number(args.passcode), discriminator: Number(args.discriminator) },
        productDescription: { name: "otagw test device", deviceType: OnOffLightDevice.deviceType },
        basicInformation: {
            vendorName: "otagw tests",
            vendorId: VendorId(Number(args["vendor-id"])),
            productName: "OTA test light",
            productId: Number(args["product-id"]),
            nodeLabel: "otagw test device",
            hardwareVersion: 1,
            softwareVersion: version,
            softwareVersionString: versionString,
            serialNumber: `otagw-${args.port}`,
            uniqueId: `otagw-test-${args.port}`,
        },
        otaSoftwareUpdateRequestor: { updateQueryInterval: 24 * 3600 * 1000 },
        ...(Number(args["idle-interval-ms"]) > 0
            ? {
                  sessions: {
                      intervals: {
                          idleInterval: Number(args["idle-interval-ms"]),
                          activeInterval: 300,
                          activeThreshold: 4000,
                      },
                  },
              }
            : {}),
    });
    let light;
    if (args["battery-percent"] !== "") {
        light = await node.add(OnOffLightDevice.with(PowerSourceServer.with("Battery")), {
            powerSource: {
                status: 1, // Active
                order: 0,
                description: "Battery",
                batPercentRemaining: 2 * batteryPercent(), // half-percent units
                batChargeLevel: 0, // Ok
                batReplaceability: 0,
                batReplacementNeeded: false,
                endpointList: [],
            },
        });
    } else {
        light = await node.add(OnOffLightDevice);
    }
    batteryEndpoint = args["battery-percent"] !== "" ? light : null;
    node.events.otaSoftwareUpdateRequestor?.updateState$Changed?.on(state => {
        emit({ event: "update-state", state, progress: node.state.otaSoftwareUpdateRequestor.updateStateProgress });
    });
    return { node, version };
}

const batteryFile = join(dir, "battery-percent");
let batteryEndpoint = null;
function batteryPercent() {
    if (existsSync(batteryFile)) return Number(readFileSync(batteryFile, "utf8").trim());
    return Number(args["battery-percent"]);
}
if (args["battery-percent"] !== "") {
    // the driver changes the charge by writing DIR/battery-percent; pushed to the cluster within 200 ms
    let shown = null;
    setInterval(async () => {
        const percent = batteryPercent();
        if (batteryEndpoint === null || percent === shown || !Number.isFinite(percent)) return;
        try {
            await batteryEndpoint.set({ powerSource: { batPercentRemaining: 2 * percent } });
            shown = percent;
            emit({ event: "battery", percent });
        } catch (error) {
            console.error("battery update failed:", error);
        }
    }, 200).unref();
}

const rebootMarker = join(dir, "reboot-pending");
let first = !existsSync(rebootMarker);
if (!first) rmSync(rebootMarker);
for (;;) {
    const { node, version } = await startNode();
    const restarted = new Promise(resolve => (restartRequested = resolve));
    await node.start();
    const codes = node.state.commissioning.pairingCodes;
    emit({
        event: first ? "ready" : "restarted",
        version,
        manualPairingCode: codes.manualPairingCode,
        qrPairingCode: codes.qrPairingCode,
        port: Number(args.port),
        commissioned: node.state.commissioning.commissioned,
    });
    first = false;
    await restarted;
    // Let the ApplyUpdateRequest exchange finish before the "reboot".
    await new Promise(resolve => setTimeout(resolve, 500));
    await node.close();
}

// matter.js's own OTA provider (CommissioningController with enableOtaProvider) as the benchmark baseline.
//
// Usage: node matterjs_ota_provider.mjs --dir DIR --image FILE.ota --code MANUALCODE [--timeout 300]
// Stores FILE.ota in the controller's OTA storage, commissions the device (on-network discovery), forces the
// update on it, then serves BDX until SIGTERM (or --timeout s). Prints OTAGW-EVENT lines:
//   {"event":"commissioned","nodeId":N}  {"event":"update-started"}
import { createReadStream } from "node:fs";
import { Readable } from "node:stream";
import { parseArgs } from "node:util";

import { Environment } from "@matter/main";
import { DclBehavior, SoftwareUpdateManager } from "@matter/node";
import { ManualPairingCodeCodec } from "@matter/types";
import { CommissioningController } from "@project-chip/matter.js";

const { values: args } = parseArgs({
    options: {
        dir: { type: "string" },
        image: { type: "string" },
        code: { type: "string" },
        timeout: { type: "string", default: "300" },
    },
});
const emit = obj => process.stdout.write("OTAGW-EVENT " + JSON.stringify(obj) + "\n");
const fileStream = path => Readable.toWeb(createReadStream(path));

Environment.default.vars.set("storage.path", args.dir);
const controller = new CommissioningController({
    environment: { environment: Environment.default, id: "otagw-bench-controller" },
    autoConnect: false,
    adminFabricLabel: "otagw bench",
    enableOtaProvider: true,
});
await controller.start();

const ota = await controller.node.act(agent => agent.get(DclBehavior).otaUpdateService);
const info = await ota.updateInfoFromStream(fileStream(args.image), `file://${args.image}`);
await ota.store(fileStream(args.image), info, true);

const pairing = ManualPairingCodeCodec.decode(args.code);
const nodeId = await controller.commissionNode({
    commissioning: { regulatoryLocation: 0, regulatoryCountryCode: "XX" },
    discovery: { identifierData: { shortDiscriminator: pairing.shortDiscriminator } },
    passcode: pairing.passcode,
});
emit({ event: "commissioned", nodeId: Number(nodeId) });

const peerAddress = { fabricIndex: controller.fabric.fabricIndex, nodeId };
await controller.otaProvider.act(agent =>
    agent.get(SoftwareUpdateManager).forceUpdate(peerAddress, info.vid, info.pid, info.softwareVersion),
);
emit({ event: "update-started" });

// The device reports the transfer (its own events); stay up serving BDX until the driver stops us.
await new Promise(resolve => {
    process.on("SIGTERM", resolve);
    setTimeout(resolve, Number(args.timeout) * 1000);
});
await controller.close();
process.exit(0);

// Zigbee2MQTT's OTA client code (zigbee-herdsman 10.x, used by Zigbee2MQTT 2.x with zigbee-herdsman-converters
// 26.x) checking one fake device against otagw's published index and downloading the image it finds.
//
// usage: node z2m_ota_check.mjs <override index URL> <data dir> <device JSON>
//   device JSON: {"ieeeAddr", "modelID", "manufacturerName", "imageType", "manufacturerCode", "fileVersion"}
// prints one JSON line: {"definition", "available", "meta", "image": {"fileVersion", "size", ...}}
//
// The path is Zigbee2MQTT's own: `ota.zigbee_ota_override_index_location` -> setOtaConfiguration(dataDir, url);
// the main index is a local empty file so nothing leaves loopback; the device's definition (and its OTA extra
// metas) comes from zigbee-herdsman-converters; Device.checkOta's matcher picks the image; getOtaFirmware
// downloads it and checks its sha512; parseOtaImage parses it.
import fs from "node:fs";
import path from "node:path";
import { findByDevice } from "zigbee-herdsman-converters";
import { getOtaFirmware, parseOtaImage, setOtaConfiguration } from "zigbee-herdsman";
import zhDevice from "zigbee-herdsman/dist/controller/model/device.js";

const [indexUrl, dataDir, deviceJson] = process.argv.slice(2);
const dev = JSON.parse(deviceJson);
fs.mkdirSync(dataDir, { recursive: true });
const mainIndex = path.join(dataDir, "main-index.json");
fs.writeFileSync(mainIndex, "[]");
setOtaConfiguration(dataDir, indexUrl);

// the fields Device.findMatchingOtaImage reads from `this` (a real Device needs a running adapter)
const fake = {
    ieeeAddr: dev.ieeeAddr,
    modelID: dev.modelID,
    manufacturerName: dev.manufacturerName,
    endpoints: [],
};
let definition;
try {
    definition = await findByDevice({ ...fake, type: "Router", getEndpoint: () => undefined, endpoints: [] });
} catch {
    definition = undefined;
}
const extraMetas = definition && typeof definition.ota === "object" ? definition.ota : {};
const current = { fieldControl: 0, manufacturerCode: dev.manufacturerCode, imageType: dev.imageType, fileVersion: dev.fileVersion };
const Device = zhDevice.Device ?? zhDevice.default;
const meta = await Device.prototype.findMatchingOtaImage.call(fake, { url: mainIndex }, current, extraMetas);
const out = { definition: definition ? definition.model : null, available: false, meta: meta ?? null, image: null };
if (meta) {
    out.available = current.fileVersion < meta.fileVersion;
    const buf = await getOtaFirmware(meta.url, meta.sha512);
    const image = parseOtaImage(buf);
    out.image = {
        fileVersion: image.header.fileVersion,
        imageType: image.header.imageType,
        manufacturerCode: image.header.manufacturerCode,
        size: buf.length,
    };
}
console.log(JSON.stringify(out));

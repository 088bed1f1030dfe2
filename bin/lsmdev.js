#!/usr/bin/env node
// `lsmdev`: mdevctl's listing command under its own name, the same as `vgpu list` (see launch.js).
import { launch } from "./launch.js";

await launch("lsmdev");

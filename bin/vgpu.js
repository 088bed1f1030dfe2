#!/usr/bin/env node
// The `vgpu` command: the compiled CLI in dist/, or the sources when they are newer (see launch.js).
import { launch } from "./launch.js";

await launch("main");

/**
 * Interrupt injection into the guest: eventfds a device signals turn into interrupts the guest's handlers see, as
 * KVM's irqfd does for QEMU (the eventfd is consumed on each wake-up and one interrupt is injected per wake-up,
 * however far the counter went).
 *
 * - `InterruptSource`: one device's interrupts as the guest's interrupt controller sees them: the handlers the guest
 *   registered (`onInterrupt`) and counters. Injection calls the handlers synchronously (the guest's ISR runs inside
 *   the device's signal, which is inside whatever MMIO access or DMA completion caused it).
 * - `EventfdIrq`: an eventfd wired to an injection (MSI vectors: edge-triggered, nothing to acknowledge).
 * - `IntxLine`: a level-triggered INTx line with vfio's automasking. After the guest's handlers return, the VMM does
 *   the EOI the guest's interrupt controller would: VFIO_DEVICE_SET_IRQS UNMASK (QEMU's vfio_intx_eoi). If unmasking
 *   finds the device still asserting, vfio signals again at once (inside the unmask), which is delivered again; after
 *   `MAX_INTX_REDELIVERIES` deliveries in a row that the guest never cleared, the line is left masked (an interrupt
 *   storm, as Linux's "nobody cared" disables a screaming line) and a `vmm.irq.storm` event says so; `eoi()` unmasks
 *   it again once the guest has dealt with the device.
 *
 * Hot path: a delivery allocates nothing (the listener and the injection target are bound once at setup).
 *
 * Not modelled: interrupt priorities, an APIC, masking by the guest's interrupt controller, MSI-X, posted interrupts.
 */
import { defineTraceEvents, type Tracer } from "../core/index.ts";
import type { EventFd } from "../host/index.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vmm.irq.inject": { vm: string; device: string; kind: string; vector: number; count: number };
    "vmm.irq.storm": { vm: string; device: string; deliveries: number };
  }
}
defineTraceEvents("vmm", {
  "vmm.irq.inject": "{vm}: {kind} interrupt, vector {vector}, from {device} (delivery {count})",
  "vmm.irq.storm": "{vm}: {device} kept INTx asserted through {deliveries} deliveries: line left masked",
});

/** What the guest's interrupt handler receives: the vector (MSI data, or the INTx line number). */
export type InterruptHandler = (vector: number) => void;

/** Consecutive INTx deliveries the guest left asserted before the line is left masked. */
export const MAX_INTX_REDELIVERIES = 64;

export type InterruptKind = "intx" | "msi";

/** One device's interrupts on the guest side. */
export class InterruptSource {
  private handlers: InterruptHandler[] = [];
  /** Interrupts injected, all kinds. */
  delivered = 0;
  intxDelivered = 0;
  msiDelivered = 0;

  constructor(
    readonly vm: string,
    readonly device: string,
    private readonly tracer: Tracer,
  ) {}

  /** Registers a handler; returns the function that removes it. */
  subscribe(fn: InterruptHandler): () => void {
    this.handlers = [...this.handlers, fn];
    return () => {
      this.handlers = this.handlers.filter((h) => h !== fn);
    };
  }

  /** Injects one interrupt: counts it and runs the guest's handlers. */
  inject(vector: number, kind: InterruptKind): void {
    this.delivered++;
    if (kind === "intx") this.intxDelivered++;
    else this.msiDelivered++;
    if (this.tracer.enabled) {
      this.tracer.emit("vmm.irq.inject", {
        vm: this.vm,
        device: this.device,
        kind,
        vector,
        count: this.delivered,
      });
    }
    // A handler that unsubscribes while running replaces the array, so this loop sees a stable snapshot.
    const hs = this.handlers;
    for (let i = 0; i < hs.length; i++) hs[i]!(vector);
  }

  clear(): void {
    this.handlers = [];
  }
}

/** An eventfd whose every wake-up injects one interrupt (an irqfd). */
export class EventfdIrq {
  private readonly off: () => void;

  constructor(
    readonly eventfd: EventFd,
    private readonly fire: () => void,
  ) {
    this.off = eventfd.onSignal(this.onSignal);
  }

  private readonly onSignal = (ev: EventFd): void => {
    if (ev.counter === 0n) return;
    ev.consume();
    this.fire();
  };

  dispose(): void {
    this.off();
  }
}

/** A level-triggered, automasked INTx line: inject, then EOI (unmask), redelivering while the device asserts. */
export class IntxLine {
  private readonly off: () => void;
  private delivering = false;
  private pending = false;
  private stormed = false;

  constructor(
    readonly eventfd: EventFd,
    private readonly source: InterruptSource,
    /** The guest's interrupt line number (config 0x3c), read at each delivery. */
    private readonly line: () => number,
    /** VFIO_DEVICE_SET_IRQS INTx UNMASK. */
    private readonly unmask: () => void,
    private readonly tracer: Tracer,
  ) {
    this.off = eventfd.onSignal(this.onSignal);
  }

  /** True while the line is left masked after a storm. */
  get masked(): boolean {
    return this.stormed;
  }

  private readonly onSignal = (ev: EventFd): void => {
    if (ev.counter === 0n) return;
    ev.consume();
    if (this.delivering) {
      // Signalled from inside our own unmask (the device still asserts): the outer loop delivers it.
      this.pending = true;
      return;
    }
    this.deliver();
  };

  private deliver(): void {
    this.delivering = true;
    let rounds = 0;
    try {
      do {
        this.pending = false;
        rounds++;
        this.source.inject(this.line(), "intx");
        if (rounds >= MAX_INTX_REDELIVERIES) break;
        this.unmask();
      } while (this.pending);
    } finally {
      this.delivering = false;
    }
    if (rounds >= MAX_INTX_REDELIVERIES) {
      this.stormed = true;
      this.pending = false;
      if (this.tracer.enabled) {
        this.tracer.emit("vmm.irq.storm", { vm: this.source.vm, device: this.source.device, deliveries: rounds });
      }
    }
  }

  /** The guest's explicit EOI: unmasks a line left masked after a storm (a signal then is delivered normally). */
  eoi(): void {
    if (!this.stormed) return;
    this.stormed = false;
    this.unmask();
  }

  dispose(): void {
    this.off();
  }
}

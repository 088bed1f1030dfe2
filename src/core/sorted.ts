/**
 * In-place insert and remove of one element of an array, for the sorted lists the model keeps (VMAs, DMA windows,
 * type1 mappings, external regions). `Array.prototype.splice` does the same but allocates the array of removed
 * elements and goes through a generic builtin on every call; on the DMA map/unmap path, where each pair inserts and
 * removes in five lists, that was the largest single cost outside the syscalls. Both are O(n - i) element moves.
 */

/** Inserts `x` at index `i` (0 <= i <= a.length), shifting the tail up by one. */
export function insertAt<T>(a: T[], i: number, x: T): void {
  const n = a.length;
  if (i >= n) {
    a.push(x);
    return;
  }
  a.push(a[n - 1]!);
  for (let k = n - 1; k > i; k--) a[k] = a[k - 1]!;
  a[i] = x;
}

/** Removes the element at index `i` (0 <= i < a.length), shifting the tail down by one. */
export function removeAt<T>(a: T[], i: number): void {
  const last = a.length - 1;
  for (let k = i; k < last; k++) a[k] = a[k + 1]!;
  a.pop();
}

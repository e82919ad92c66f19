"""A pool of large CPU buffers reused across calls of the fast path (`models.fused`).

Not part of any equation: it only decides where the fast path's (N, ·) buffers live. `workspace.empty`
behaves like `like.new_empty(*shape)`.
"""
import threading

import torch


class Workspace:
    """Large CPU buffers reused across calls, so that their pages are not faulted in anew each time.

    A new multi-megabyte tensor can come from the OS as untouched pages, and the first write to each
    page then faults into the kernel: for a buffer written once per call that is a cost per megabyte
    on every call. So the buffers of the sequence (activations, states, gradients) are taken from a small pool and go back to it by
    themselves: a pooled buffer is free again when nothing but the pool refers to its storage — not
    the autograd graph that saved it, not an output view a caller kept, not a gradient in flight.
    Only CPU buffers of 256 KiB to 256 MiB are pooled (CUDA has its caching allocator), at most four
    of a size, sixteen sizes, 768 MiB in all (least recently used sizes go first): enough for every
    buffer of an LSTM training step on pixel MNIST (batch 64, 784 steps, hidden 128: ~400 MiB), whose
    largest buffers are the ones that fault the most pages. `workspace.total_bytes = 0` keeps only the
    most recently used size, for a process short of memory. The storage use
    count is a private torch API; if it is missing or behaves unexpectedly the pool turns itself off.

    Under `torch.inference_mode()` the pool serves too (a call there faults its pages like any
    other): a pooled buffer is made outside inference mode even then, a normal tensor, because an
    inference tensor could not be written by a later call outside it; a normal tensor can be
    written inside it.
    """

    def __init__(self, per_size=4, sizes=16, min_bytes=256 << 10, max_bytes=256 << 20, total_bytes=768 << 20):
        self.per_size, self.sizes, self.min_bytes, self.max_bytes = per_size, sizes, min_bytes, max_bytes
        self.total_bytes = total_bytes  # what the pool may hold in all
        self.pool = {}  # (dtype, numel) -> [flat tensors], most recently used size last
        self.lock = threading.Lock()
        try:
            use_count = torch._C._storage_Use_Count
            probe = torch.empty(1)
            self.enabled = use_count(probe.untyped_storage()._cdata) == 2  # the tensor + this query
            view = probe[:]
            self.enabled &= use_count(probe.untyped_storage()._cdata) == 3
            del view
        except (AttributeError, RuntimeError, TypeError):
            self.enabled = False

    def _free(self, flat):
        return torch._C._storage_Use_Count(flat.untyped_storage()._cdata) == 2

    def empty(self, like, *shape):
        """An uninitialised tensor like `like.new_empty(*shape)`, from the pool where it pays."""
        numel = 1
        for s in shape:
            numel *= s
        nbytes = numel * like.element_size()
        if not self.enabled or like.device.type != "cpu" or not self.min_bytes <= nbytes <= self.max_bytes:
            return like.new_empty(shape)
        key = (like.dtype, numel)
        with self.lock:
            buffers = self.pool.pop(key, [])
            self.pool[key] = buffers  # most recently used last
            for flat in buffers:
                if self._free(flat):
                    return flat.view(shape)
            with torch.inference_mode(False):  # a normal tensor, writable inside inference mode and out
                flat = torch.empty(numel, dtype=like.dtype, device=like.device)
            if len(buffers) < self.per_size:
                buffers.append(flat)
            held = sum(b.numel() * b.element_size() for bs in self.pool.values() for b in bs)
            while len(self.pool) > 1 and (len(self.pool) > self.sizes or held > self.total_bytes):
                oldest = self.pool.pop(next(iter(self.pool)))  # the least recently used size
                held -= sum(b.numel() * b.element_size() for b in oldest)
            return flat.view(shape)


workspace = Workspace()

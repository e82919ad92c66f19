"""Speed of our RNN, LSTM and GRU layers against torch.nn, checked equal before they are timed.

    python -m benchmarks --device cpu --cells rnn,lstm,gru --shapes 64,28,28,128 --json b.json

For every shape (B, T, I, H) and cell, one `torch.nn` layer is built and its state_dict copied into
each of our implementations, so all of them run the same weights on the same input and the same
upstream gradient:

    torch     torch.nn.RNN / LSTM / GRU (cuDNN on a GPU, torch's own kernels on a CPU)
    readable  models.<Cell>(impl="readable"): the plain Python unroll of the cell, the code to read
    ours      models.<Cell>() on its default path, impl="auto": the fastest correct path

Before any timing, each implementation's output, final states and gradients (of the input and of
every named parameter) are compared with torch.nn's; a mismatch aborts the run. Timings are medians
from `torch.utils.benchmark.Timer.blocked_autorange`, which warms up and synchronises the GPU.

`run.py` holds the command line and the measurements, `report.py` the markdown tables and the plot
of the ratios; `results/` keeps the reports of reference machines. References: PyTorch's
`benchmarks/fastrnns` (whose default shape, 64 × 100 × 512 → 512, is one of ours) and
https://pytorch.org/docs/stable/benchmark_utils.html.
"""

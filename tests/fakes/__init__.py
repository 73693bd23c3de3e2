"""Recording fakes of ``tensorrt`` and CUDA Python / pycuda for driving the real build and runtime code on a
CPU-only machine. Device memory is plain host memory, so data really flows through copies and "execution"."""

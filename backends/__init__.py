"""Code generators: reference (PyTorch), flex (FlexAttention) and triton."""

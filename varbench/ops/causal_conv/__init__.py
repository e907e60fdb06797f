"""Depthwise causal conv1d with a carried tail (Mamba's short convolution), fed one scale at a time."""

"""Networks: super-resolution (EDSR) and the non-learned upsampler used by L2T."""

"""Pure I/O and pixels: discovery, decoding, geometry, colour, atomic writes, manifest. No autograd here."""

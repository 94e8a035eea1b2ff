"""Definition-file builds: bootstrap agents, sections, and image assembly.

`sifbox.build.assemble.write_sif(rootfs, out_path, deffile_text, ...)` turns
a finished root directory (or SquashFS file) into a SIF image.
"""

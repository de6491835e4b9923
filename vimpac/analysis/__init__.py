"""Analysis and visualisation (paper Appendix H): the copy-paste baseline of Figure 4, model
reconstructions of Figure 5, pictures of sampled masks, and training curves.

Modules: `copy_fill` (nearest-visible-neighbour filling, vectorised), `copy_baseline` (the
Figure 4 experiment on a token store), `reconstruct` (Figure 5), `masks` (mask pictures and the
induced-ratio histogram), `curves` (`vimpac plot`), `images` (pixel-exact image grids, GIFs and
matplotlib set-up shared by the others), `outputs` (an --out folder that describes one run),
`commands` (the CLI).
"""

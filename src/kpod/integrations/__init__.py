"""kpod's token weights in other libraries' trainers (entry points: they import kpod's stages, nothing imports them)."""

"""The benchmark studies, run from the repository root either way:

    python -m benchmarks.diva --protocol glyphs_pretrained --seeds 0 1 2
    python benchmarks/diva.py --protocol glyphs_pretrained --seeds 0 1 2

Each study imports the shared helpers as ``benchmarks._report`` / ``benchmarks._glyphs``; run as a script, it first
puts the repository root on ``sys.path`` (the guard above its ``benchmarks`` imports), so the same imports resolve.
"""

"""The lab: benchmarks, official-parity tools, the GPU check and the output-identity check.

Not part of the installed package; run from the repository root as ``python -m dev.<tool>``
(see ``dev/README.md``)."""

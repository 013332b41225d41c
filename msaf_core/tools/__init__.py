"""The programs of msaf_core: msaf-train, msaf-eval, msaf-export, msaf-bench."""

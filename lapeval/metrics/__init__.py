"""Metrics of the lapeval tasks: :mod:`.lss` (Language Steering Shift), :mod:`.translation` (corpus BLEU,
chrF++, spBLEU, off-target rate) and :mod:`.lid` (fastText language identification)."""

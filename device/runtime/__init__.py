"""The on-device runtime: loads exported SRM artifacts, re-ranks, fuses, decides requests. No torch here."""

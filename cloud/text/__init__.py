"""Item knowledge from language models: one vector per item text (`lsc4rec embed items`)."""

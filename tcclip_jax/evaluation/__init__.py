"""Evaluation: multi-view accuracy (`accuracy`), the paper's protocols (`protocols`), WiSE-FT
(`wise_ft`) and result tables (`tables`)."""

"""From a conditioned signal to labelled beats: candidate beats and windows, rhythm (RR)
and beat-shape (morphology) features and their context, the second lead, the segment stage's
summary, and patient-grouped folds. May import `data_prep.records` and data_prep's shared
layout, params and cli; never torch.
"""

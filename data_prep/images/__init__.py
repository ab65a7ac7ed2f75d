"""From a window to a 224x224 image: the STFT core (`stft`), image kinds and channels
(`channels`) and the preview grids people look at (`preview`). May import
`data_prep.records`, `data_prep.beats` and data_prep's shared layout, params and cli; never
torch.
"""

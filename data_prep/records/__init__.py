"""Reading records: WFDB files (`wfdb_io`, the only wfdb importer), local mirrors and
checksums, signal conditioning (lead choice, resampling, band-pass) and the database and
label-map configs of `configs/`. May import data_prep's shared layout, params and cli, no
other room; never torch.
"""

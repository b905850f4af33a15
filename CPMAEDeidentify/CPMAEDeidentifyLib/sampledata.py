"""The sample head this module registers with Slicer's Sample Data module.

pydeface's averaged head (an average of many subjects, so nobody's face, MIT licence) is the one
head whose pictures this project publishes; registering it lets a user try the module and
compare with the README pictures. The file at the pinned pydeface tag is byte-identical to the
one in the ``pydeface==2.1.0`` wheel that the engine's ``cpmae.samples`` uses (same git blob),
and Sample Data verifies the SHA256 after download. Slicer's own T1 sample, MRHead, needs no
registration.
"""

AVERAGED_HEAD = {
    "category": "CPMAE",
    "sampleName": "CPMAEAveragedHead",
    "uris": "https://raw.githubusercontent.com/poldracklab/pydeface/v2.1.0/pydeface/data/mean_reg2mean.nii.gz",
    "fileNames": "pydeface_mean_reg2mean.nii.gz",
    "nodeNames": "AveragedHead",
    "checksums": "SHA256:fdc13571d66293f9919648cd8de9a7b3491b12175e09336353d2c9ce0466ecb6",
}

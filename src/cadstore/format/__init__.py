"""What cadstore's files hold, byte for byte: Zarr v2/v3 encoding and validated decoding.

==========================  ===========================================================
module                      owns
==========================  ===========================================================
:mod:`~.codecs`             chunk codecs written, and the allow-list of those read
:mod:`~.zarr_nodes`         Zarr array metadata and chunks, without zarr-python
:mod:`~.hierarchy`          a Zarr hierarchy of cadstore nodes, read or built
:mod:`~.jsoncodec`          the lossless, strict-JSON encoding of nodes and metadata
:mod:`~.sharding`           ``sharding_indexed`` shards of row-concatenated arrays
:mod:`~.triangle`           upper-triangle storage of symmetric face-pair arrays
:mod:`~.layout`             a merged ``.dataset``'s names, dimensions and group rules
:mod:`~.manifest`           the ``.flow`` manifest naming a dataset and its tables
:mod:`~.commit`             the commit record of a dataset version and its tables
:mod:`~.limits`             the safety limits checked before anything is allocated
==========================  ===========================================================

Where the bytes go (files, objects, zips) is :mod:`cadstore.io`'s business.
"""

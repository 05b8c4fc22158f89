"""Physiologically grounded image phantoms (echo, CMR, CT) with label masks and truth.

The public API of the image phantoms; the shared 3-D heart lives in `anatomy`, the image
formation of each modality in `echo`, `cmr` and `ct`. Label values are
`mmcardio.records.Label`; truth values are the physical model's (analytic volumes),
except the calcium score, which is the standard Agatston score of the phantom's own HU volume.
"""

from mmcardio.datasets.synthetic.anatomy import HeartParams
from mmcardio.datasets.synthetic.cmr import make_cmr
from mmcardio.datasets.synthetic.ct import make_ct
from mmcardio.datasets.synthetic.echo import make_echo
from mmcardio.datasets.synthetic.imaging import EchoPhantom, VolumePhantom

__all__ = ["EchoPhantom", "HeartParams", "VolumePhantom", "make_cmr", "make_ct", "make_echo"]

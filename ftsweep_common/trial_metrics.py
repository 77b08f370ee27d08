"""Names of the extra values a trainer may report beside its metrics, shared by trainers and the session."""

from __future__ import annotations

#: A trainer may report ``majority_<metric>`` with its first epoch: the score of always predicting the
#: training data's most frequent class. A trial whose first epoch scores exactly that, while another trial
#: of the study did better, learned nothing, and the session prunes it as ``no progress``.
MAJORITY_PREFIX = "majority_"

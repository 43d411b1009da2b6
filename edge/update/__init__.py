"""Software updates: signed release bundles, their download on the gateway, the A/B install and the probation (docs/updates.md).

``manifest``  what a release is and every check of a bundle, offline (a reason per refusal)
``bundle``    building a bundle from a wheelhouse, with the release key
``fetch``     the gateway's part: download only the files it does not hold (HTTP Range), verify, ask
``slots``     the A/B layout under /opt/ocn-edge and the atomic switch of ``current``
``probation`` whether a freshly started version has proven itself, from the gateway's /status
``install``   the privileged installer the path unit starts: build the other slot, switch, watch, roll back
"""

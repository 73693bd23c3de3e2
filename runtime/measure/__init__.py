"""Workstation measuring tools, apart from what a device needs to enhance frames (torch-free).

``bench`` (the ``dfn bench`` harness, by job: ``plan`` what a row loads, ``runner`` the loaded row,
``rows`` its statistics, ``scoring`` its quality, ``report``/``plot`` the output, ``frames`` the frame it
runs on), ``auto`` (``--backend auto``'s measured choice), ``compare`` (parity of two models),
``evaluate``/``pairs``/``baselines``/``sheet`` (``dfn eval`` on paired data), ``macs`` (``dfn info``'s
counts) and ``machine`` (what the numbers were measured on).
"""

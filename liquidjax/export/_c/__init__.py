"""Export to C: the step's jaxpr translated to C99 (:mod:`._cgen`, with :mod:`._ctranslator` and
:mod:`._celementwise`), the files written around it (:mod:`._cbuild`) and :func:`._to_c.to_c`."""

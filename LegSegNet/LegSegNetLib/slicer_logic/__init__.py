"""The Slicer side below the widget: `LegSegNetLogic` and the annotation logic on MRML (no Qt), the
conversion between MRML nodes and the library's arrays, the result tables and plot, dependency
installation inside Slicer (dependencies.py decides, packages.py runs the steps), the widget's rules as plain
functions (widget_rules.py), and the module's self-test. The only part that imports `slicer`/`vtk`/MRML;
nothing else in LegSegNetLib may import it."""

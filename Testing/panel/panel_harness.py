"""Load the module's .ui with a real Qt binding (PySide6's QUiLoader) the way Slicer's loader would.

Slicer builds a panel from its .ui with the designer plugins it ships: a class without a plugin
silently becomes a plain QWidget (that is how a ``qMRMLPlotView`` once broke the training
section). Here only the classes in ``SLICER_DESIGNER_PLUGINS`` get a stand-in; every other
non-Qt class is reported, and every created widget must have the class the .ui names.

Run as a script (in its own process: one QApplication, a display from Xvfb)::

    python panel_harness.py UI_FILE REPORT.json [SCREENSHOT.png]

The report lists the .ui classes, what was created for each widget, the unknown classes and the
SlicerParameterName bindings; the screenshot shows the panel at Slicer's module panel width.
"""
from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

# Widget classes with a Qt Designer plugin in Slicer 5.8, 5.10 and main (Libs/MRML/Widgets/
# DesignerPlugins and CTK's Libs/Widgets/Plugins). qMRMLPlotView is NOT one of them
# (qMRMLPlotWidget is). A fixed list on purpose: adding a class here needs a look at Slicer.
SLICER_DESIGNER_PLUGINS = frozenset({
    # MRML widgets
    "qMRMLCaptureToolBar", "qMRMLCheckableNodeComboBox", "qMRMLClipNodeDisplayWidget", "qMRMLClipNodeWidget",
    "qMRMLCollapsibleButton", "qMRMLColorListView", "qMRMLColorTableComboBox", "qMRMLColorTableView",
    "qMRMLCoordinatesWidget", "qMRMLDisplayNodeViewComboBox", "qMRMLDisplayNodeWidget",
    "qMRMLEventBrokerWidget", "qMRMLExpandingWebView", "qMRMLLabelComboBox", "qMRMLLayoutWidget",
    "qMRMLLinearTransformSlider", "qMRMLListWidget", "qMRMLMatrixWidget", "qMRMLModelInfoWidget",
    "qMRMLNavigationView", "qMRMLNodeAttributeTableView", "qMRMLNodeAttributeTableWidget", "qMRMLNodeComboBox",
    "qMRMLPlotViewControllerWidget", "qMRMLPlotWidget", "qMRMLROIWidget", "qMRMLRangeWidget",
    "qMRMLScalarInvariantComboBox", "qMRMLSceneFactoryWidget", "qMRMLSliceControllerWidget",
    "qMRMLSliceInformationWidget", "qMRMLSliceWidget", "qMRMLSliderWidget", "qMRMLSpinBox", "qMRMLTableView",
    "qMRMLThreeDViewInformationWidget", "qMRMLThreeDView", "qMRMLTransformSliders", "qMRMLTreeView",
    "qMRMLVolumeInfoWidget", "qMRMLVolumeThresholdWidget", "qMRMLWidget", "qMRMLWindowLevelWidget",
    # CTK widgets
    "ctkActionsWidget", "ctkAxesWidget", "ctkCheckBox", "ctkCheckableComboBox", "ctkCheckablePushButton",
    "ctkCollapsibleButton", "ctkCollapsibleGroupBox", "ctkColorPickerButton", "ctkComboBox",
    "ctkCoordinatesWidget", "ctkDirectoryButton", "ctkDoubleRangeSlider", "ctkDoubleSlider", "ctkDoubleSpinBox",
    "ctkDynamicSpacer", "ctkExpandButton", "ctkFittedTextBrowser", "ctkFontButton", "ctkMatrixWidget",
    "ctkMenuButton", "ctkPathLineEdit", "ctkPathListWidget", "ctkPopupWidget", "ctkPushButton",
    "ctkRangeSlider", "ctkRangeWidget", "ctkSearchBox", "ctkSliderWidget", "ctkSpinBox", "ctkTreeComboBox",
})


def ui_classes(ui_path) -> dict:
    """{widget name: class} for every widget in the .ui."""
    return {w.get("name"): w.get("class") for w in ET.parse(ui_path).getroot().iter("widget")}


def _stand_ins(QtCore, QtWidgets) -> dict:
    """Python stand-ins for the plugin classes this panel uses, with the properties it sets."""

    def prop(kind, name, default):
        attr = f"_{name}"
        return QtCore.Property(kind, lambda self: getattr(self, attr, default),
                               lambda self, value: setattr(self, attr, value))

    class qMRMLWidget(QtWidgets.QWidget):
        pass

    class ctkCollapsibleButton(QtWidgets.QGroupBox):
        """A titled box; ``collapsed`` hides the content like Slicer's."""

        def _get_text(self):
            return self.title().lstrip("▾▸ ")

        def _set_text(self, value):
            self.setTitle(("▸ " if getattr(self, "_collapsed", False) else "▾ ") + value)

        def _get_collapsed(self):
            return getattr(self, "_collapsed", False)

        def _set_collapsed(self, value):
            text = self._get_text()
            self._collapsed = bool(value)
            self._set_text(text)
            self.setMaximumHeight(24 if value else 16777215)

        text = QtCore.Property(str, _get_text, _set_text)
        collapsed = QtCore.Property(bool, _get_collapsed, _set_collapsed)

    class qMRMLNodeComboBox(QtWidgets.QComboBox):
        nodeTypes = prop("QStringList", "nodeTypes", [])
        showChildNodeTypes = prop(bool, "showChildNodeTypes", True)
        noneEnabled = prop(bool, "noneEnabled", False)
        noneDisplay = prop(str, "noneDisplay", "None")
        addEnabled = prop(bool, "addEnabled", True)
        removeEnabled = prop(bool, "removeEnabled", True)
        renameEnabled = prop(bool, "renameEnabled", False)

    class ctkPathLineEdit(QtWidgets.QWidget):
        filters = prop(str, "filters", "")

        def __init__(self, parent=None):
            QtWidgets.QWidget.__init__(self, parent)  # no super(): the class is rebuilt below
            layout = QtWidgets.QHBoxLayout(self)
            layout.setContentsMargins(0, 0, 0, 0)
            self.edit = QtWidgets.QComboBox(self)
            self.edit.setEditable(True)
            layout.addWidget(self.edit, 1)
            button = QtWidgets.QToolButton(self)
            button.setText("...")
            layout.addWidget(button)

    class ctkSliderWidget(QtWidgets.QWidget):
        decimals = prop(int, "decimals", 2)

        def __init__(self, parent=None):
            QtWidgets.QWidget.__init__(self, parent)  # no super(): the class is rebuilt below
            layout = QtWidgets.QHBoxLayout(self)
            layout.setContentsMargins(0, 0, 0, 0)
            layout.addWidget(QtWidgets.QSlider(QtCore.Qt.Horizontal, self), 1)
            layout.addWidget(QtWidgets.QDoubleSpinBox(self))

    made = {}
    for cls in (qMRMLWidget, ctkCollapsibleButton, qMRMLNodeComboBox, ctkPathLineEdit, ctkSliderWidget):
        # rebuilt at top level so Qt's class name is exactly the Slicer class name
        namespace = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
        namespace["__qualname__"] = cls.__name__
        made[cls.__name__] = type(cls.__name__, cls.__bases__, namespace)
    assert set(made) <= SLICER_DESIGNER_PLUGINS, "a stand-in for a class Slicer has no plugin for"
    return made


def load(ui_path, screenshot=None) -> dict:
    from PySide6 import QtCore, QtWidgets
    from PySide6.QtUiTools import QUiLoader

    messages = []
    QtCore.qInstallMessageHandler(lambda kind, context, text: messages.append(text))
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([sys.argv[0]])
    app.setStyle("Fusion")
    loader = QUiLoader()
    qt_classes = set(loader.availableWidgets())  # what Qt itself can build
    classes = ui_classes(ui_path)
    unknown = sorted({c for c in classes.values() if c not in qt_classes and c not in SLICER_DESIGNER_PLUGINS})
    stand_ins = _stand_ins(QtCore, QtWidgets)
    for name in sorted({c for c in classes.values() if c in SLICER_DESIGNER_PLUGINS}):
        if name not in stand_ins:
            unknown.append(f"{name} (Slicer has a plugin, but this harness has no stand-in yet)")
        else:
            loader.registerCustomWidget(stand_ins[name])
    f = QtCore.QFile(str(ui_path))
    f.open(QtCore.QFile.ReadOnly)
    root = loader.load(f)
    f.close()
    report = {"ui_classes": classes, "unknown_classes": unknown, "load_error": loader.errorString() or "",
              "created": {}, "bindings": {}, "qt_messages": sorted(set(messages))}
    if root is None:
        return report
    for name, cls in classes.items():
        widget = root if root.objectName() == name else root.findChild(QtCore.QObject, name)
        report["created"][name] = widget.metaObject().className() if widget is not None else None
        if widget is not None:
            parameter = widget.property("SlicerParameterName")
            if parameter:
                report["bindings"][name] = parameter
    if screenshot:
        report["screenshot"] = _screenshot(app, root, screenshot, QtWidgets)
    return report


def _screenshot(app, root, path, QtWidgets) -> list:
    """The panel as a user sees it after Apply: example labels filled, every section open."""
    def find(cls, name):
        return root.findChild(cls, name)

    find(QtWidgets.QComboBox, "inputSelector").addItem("AveragedHead")
    find(QtWidgets.QComboBox, "maskSelector").addItem("Compute with deepbet")
    models = find(QtWidgets.QComboBox, "modelSelector")
    models.addItems(["demo-128 0.1.0 (128³, built in)", "demo-256 0.1.0 (256³, built in)"])
    find(QtWidgets.QLabel, "resolutionValueLabel").setText("128³")
    gpu = find(QtWidgets.QLabel, "gpuInfoLabel")
    gpu.setWordWrap(True)
    gpu.setText("No CUDA GPU detected: runs on the CPU (128³ takes about a minute).")
    views = find(QtWidgets.QComboBox, "qaViewComboBox")
    views.addItems(["frontal", "3/4 left", "3/4 right", "left profile", "right profile", "from below"])
    find(QtWidgets.QLabel, "decisionLabel").setText("not reviewed")
    find(QtWidgets.QLabel, "resultLabel").setText("AveragedHead_deidentified")
    find(QtWidgets.QPlainTextEdit, "logTextEdit").setPlainText(
        "De-identifying ...\nbrain mask ...\nsample ...\ndecode ...\ndone")
    table = find(QtWidgets.QTableWidget, "reviewTable")
    table.setHorizontalHeaderLabels(["case", "status", "self-check", "decision", "reason"])
    cases = [("sub-01_T1w.nii.gz", "ok", "passed", "approved", ""), ("sub-02_T1w.nii.gz", "ok", "flagged", "", ""),
             ("sub-03_T1w.nii.gz", "failed", "not checked", "", "")]
    table.setRowCount(len(cases))
    for r, values in enumerate(cases):
        for c, value in enumerate(values):
            table.setItem(r, c, QtWidgets.QTableWidgetItem(value))
    table.resizeColumnsToContents()
    table.setMaximumHeight(120)
    find(QtWidgets.QWidget, "batchReviewCollapsibleButton").setProperty("collapsed", False)
    training = find(QtWidgets.QWidget, "trainingCollapsibleButton")
    training.setProperty("collapsed", True)
    root.resize(440, root.sizeHint().height())
    root.show()
    for _ in range(10):
        app.processEvents()
    picture = root.grab()
    picture.save(str(path))
    return [picture.width(), picture.height()]


if __name__ == "__main__":
    ui, out = sys.argv[1], sys.argv[2]
    shot = sys.argv[3] if len(sys.argv) > 3 else None
    Path(out).write_text(json.dumps(load(ui, shot), indent=2), encoding="utf-8")

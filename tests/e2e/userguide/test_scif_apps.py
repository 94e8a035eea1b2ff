"""definition_files.rst "SCIF Apps": two apps, foo and bar, in one image (data/scif.def, with
this machine's busybox for `From: ubuntu`), and the --app option of run, exec and inspect.
"""

from __future__ import annotations

import pytest

from tests.e2e.apptainer.cases import C, Case, contains, exact, lacks, params, regex
from tests.e2e.userguide import guide
from tests.e2e.userguide.test_build import NOT_EXPORTED
from tests.e2e.userguide.guide import staged

pytestmark = pytest.mark.integration

DF = "definition_files.rst"

SCIF = [
    C(f"{DF}:SCIF %app* sections[build]", "build", "my_container.sif", "scif.def",
      host_paths=(("file", "@work@/my_container.sif"),)),
    C(f"{DF}:SCIF %app* sections[run --app foo]", "run", "--app", "foo", "@scif@", out=exact("RUNNING FOO")),
    C(f"{DF}:SCIF %app* sections[exec --app foo]", "exec", "--app", "foo", "@scif@", "env",
      out=regex(r"(?m)^SOFTWARE=foo$")),
    C(f"{DF}:SCIF %app* sections[exec --app bar]", "exec", "--app", "bar", "@scif@", "env",
      out=regex(r"(?m)^SOFTWARE=bar$")),
    # %appinstall runs in the app's directory, %appfiles copies into it.
    C(f"{DF}:SCIF %app* sections[%appinstall %appfiles]", "exec", "@scif@", "ls", "/scif/apps/foo",
      "/scif/apps/bar", out=(regex(r"(?m)^foo\.exec$"), regex(r"(?m)^foo\.txt$"), regex(r"(?m)^bar\.exec$"))),
    C(f"{DF}:SCIF %app* sections[%apphelp]", "run-help", "--app", "bar", "@scif@",
      out=contains("This is the help for bar.")),
    C(f"{DF}:SCIF %app* sections[%applabels]", "inspect", "--app", "foo", "--labels", "@scif@",
      out=regex(r"(?m)^BESTAPP: FOO$")),
    # %environment (GLOBAL=variables, AVAILABLE="to all apps") is sourced for every app; without
    # `export`, its variables reach no command (NOT_EXPORTED), while %appenv's exported ones do.
    C(f"{DF}:SCIF %app* sections[%environment]", "exec", "--app", "bar", "@scif@", "env",
      out=(lacks("GLOBAL="), lacks("AVAILABLE="), regex(r"(?m)^SOFTWARE=bar$")), diverges=NOT_EXPORTED),
]  # fmt: skip


@pytest.mark.parametrize("case", params(SCIF))
def test_scif(request, sb, case: Case) -> None:
    guide.run(request, sb, case, staged("scif.def", "foo.txt") if "[build]" in case.name else None)

"""Heads built from several MLP paths: USDL and MUSDL (score bins), DAE-MT (execution x difficulty) and DAE-judges
(one path per judge), with their fitters."""

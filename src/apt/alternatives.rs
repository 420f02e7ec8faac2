//! The update-alternatives database, `/var/lib/dpkg/alternatives/<name>`:
//!
//! ```text
//! auto|manual
//! <master link>
//! <slave name>\n<slave link>     (per slave)
//! <empty line>
//! <choice path>\n<priority>\n<slave path or empty line per slave>   (per choice)
//! <empty line>
//! ```

use super::scripts::AltInstall;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub path: String,
    pub priority: i64,
    /// One entry per slave of the group, empty when this choice lacks it.
    pub slaves: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AltDb {
    pub manual: bool,
    pub link: String,
    /// (name, link)
    pub slaves: Vec<(String, String)>,
    pub choices: Vec<Choice>,
}

impl AltDb {
    pub fn new(link: &str) -> AltDb {
        AltDb { manual: false, link: link.to_string(), slaves: Vec::new(), choices: Vec::new() }
    }

    pub fn parse(text: &str) -> Result<AltDb, String> {
        let mut it = text.split('\n');
        let mut next = |what: &str| it.next().map(str::to_string).ok_or(format!("truncated before {what}"));
        let manual = match next("mode")?.as_str() {
            "auto" => false,
            "manual" => true,
            m => return Err(format!("bad mode {m:?}")),
        };
        let link = next("link")?;
        let mut slaves = Vec::new();
        loop {
            let n = next("slave")?;
            if n.is_empty() {
                break;
            }
            slaves.push((n, next("slave link")?));
        }
        let mut choices = Vec::new();
        loop {
            let path = next("choice")?;
            if path.is_empty() {
                break;
            }
            let p = next("priority")?;
            let priority = p.parse().map_err(|_| format!("bad priority {p:?}"))?;
            let mut sp = Vec::new();
            for _ in 0..slaves.len() {
                sp.push(next("slave path")?);
            }
            choices.push(Choice { path, priority, slaves: sp });
        }
        Ok(AltDb { manual, link, slaves, choices })
    }

    /// Add (or replace) the choice of one `--install` call.
    pub fn add(&mut self, a: &AltInstall) {
        for (l, n, _) in &a.slaves {
            if !self.slaves.iter().any(|(sn, _)| sn == n) {
                self.slaves.push((n.clone(), l.clone()));
                for c in &mut self.choices {
                    c.slaves.push(String::new());
                }
            }
        }
        let slaves = self
            .slaves
            .iter()
            .map(|(sn, _)| a.slaves.iter().find(|(_, n, _)| n == sn).map(|s| s.2.clone()).unwrap_or_default())
            .collect();
        let c = Choice { path: a.path.clone(), priority: a.priority, slaves };
        match self.choices.iter_mut().find(|x| x.path == a.path) {
            Some(x) => *x = c,
            None => self.choices.push(c),
        }
        self.link = a.link.clone();
        self.sort();
    }

    /// update-alternatives keeps slaves sorted by name and choices by path.
    fn sort(&mut self) {
        let mut order: Vec<usize> = (0..self.slaves.len()).collect();
        order.sort_by(|&i, &j| self.slaves[i].0.cmp(&self.slaves[j].0));
        self.slaves = order.iter().map(|&i| self.slaves[i].clone()).collect();
        for c in &mut self.choices {
            c.slaves = order.iter().map(|&i| c.slaves.get(i).cloned().unwrap_or_default()).collect();
        }
        self.choices.sort_by(|a, b| a.path.cmp(&b.path));
    }

    /// Highest priority; on a tie the first by path, as update-alternatives does.
    pub fn best(&self) -> Option<&Choice> {
        self.choices.iter().fold(None, |b: Option<&Choice>, c| match b {
            Some(b) if b.priority >= c.priority => Some(b),
            _ => Some(c),
        })
    }

    /// (link, alternative name, target) for the best choice: master first, then slaves
    /// the choice provides.
    pub fn links(&self, name: &str) -> Vec<(String, String, String)> {
        let Some(b) = self.best() else { return Vec::new() };
        let mut v = vec![(self.link.clone(), name.to_string(), b.path.clone())];
        for ((sn, sl), p) in self.slaves.iter().zip(&b.slaves) {
            if !p.is_empty() {
                v.push((sl.clone(), sn.clone(), p.clone()));
            }
        }
        v
    }

    pub fn to_text(&self, _name: &str) -> String {
        let mut s = format!("{}\n{}\n", if self.manual { "manual" } else { "auto" }, self.link);
        for (n, l) in &self.slaves {
            s.push_str(&format!("{n}\n{l}\n"));
        }
        s.push('\n');
        for c in &self.choices {
            s.push_str(&format!("{}\n{}\n", c.path, c.priority));
            for p in &c.slaves {
                s.push_str(&format!("{p}\n"));
            }
        }
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(path: &str, prio: i64, slave: &str) -> AltInstall {
        AltInstall {
            link: "/usr/sbin/ebtables".into(),
            name: "ebtables".into(),
            path: path.into(),
            priority: prio,
            slaves: vec![("/usr/sbin/ebtables-save".into(), "ebtables-save".into(), slave.into())],
        }
    }

    #[test]
    fn merge_keeps_higher_priority_and_round_trips() {
        let mut db = AltDb::new("/usr/sbin/ebtables");
        db.add(&inst("/usr/sbin/ebtables-nft", 20, "/usr/sbin/ebtables-nft-save"));
        let text = db.to_text("ebtables");
        assert_eq!(
            text,
            "auto\n/usr/sbin/ebtables\nebtables-save\n/usr/sbin/ebtables-save\n\n\
             /usr/sbin/ebtables-nft\n20\n/usr/sbin/ebtables-nft-save\n\n"
        );
        let mut back = AltDb::parse(&text).unwrap();
        assert_eq!(back, db);
        back.add(&inst("/usr/sbin/ebtables-legacy", 10, "/usr/sbin/ebtables-legacy-save"));
        assert_eq!(back.best().unwrap().path, "/usr/sbin/ebtables-nft");
        assert_eq!(back.choices.len(), 2);
        assert_eq!(back.choices[0].path, "/usr/sbin/ebtables-legacy");
        let links = back.links("ebtables");
        assert_eq!(
            links[1],
            ("/usr/sbin/ebtables-save".into(), "ebtables-save".into(), "/usr/sbin/ebtables-nft-save".into())
        );
        assert!(AltDb::parse("bogus\n").is_err());
    }
}

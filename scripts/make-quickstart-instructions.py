#!/usr/bin/env python3
"""Writes data/quickstart/verified_instructions.jsonl: the quick start's hand-written
verified instructions, in the record shape of the crossval stage's output
(`{id, instruction, ifeval_types, funcs: [{source, accuracy}], cases: [{input, output,
pass_rate}]}`; `ifeval_types`: the IFEval instruction ids the instruction corresponds to).

Every function runs on every case of its instruction; accuracy and pass rate are the
measured values (pass rate = share of the functions returning True, as in crossval).
Nothing is written when a function disagrees with a case, when an instruction breaks the
house rules below, or when an instruction sentence occurs in an IFEval prompt.

Usage: python3 scripts/make-quickstart-instructions.py [--out PATH] [--ifeval PATH]
"""

import argparse
import json
import os
import re
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "data", "quickstart", "verified_instructions.jsonl")
DEFAULT_IFEVAL = os.path.join(ROOT, "..", "shared", "data", "ifeval", "input_data.jsonl")
ALLOWED_IMPORTS = {"re", "json", "string"}

INSTRUCTIONS = []

# An instruction names an IFEval instruction id when it trains a constraint that the id's
# checker tests, even in other words, with another number or relation ("exactly three
# sentences" -> number_sentences), another convention (blank-line paragraphs ->
# number_paragraphs, whose prompts separate paragraphs with ***), or as part of the check
# (a first word -> nth_paragraph_first_word; "the word X twice" -> keywords:existence too).
# Generous on purpose: the run report splits IFEval's per-type table into covered and not
# covered types, and a gain on the uncovered ones is the claim that needs the clean test.


def instruction(text, ifeval_types, funcs, cases):
    """One instruction: its text, the IFEval instruction ids it corresponds to (the rule is
    above INSTRUCTIONS), its evaluate() functions and its (answer, expected verdict) cases."""
    INSTRUCTIONS.append({
        "instruction": text,
        "ifeval_types": ifeval_types,
        "funcs": [textwrap.dedent(f).strip("\n") for f in funcs],
        "cases": cases,
    })


# ---------------------------------------------------------------- letter case

instruction(
    "Write your entire reply in lowercase letters, with no capitals at all",
    ["change_case:english_lowercase"],
    [
        r'''
        def evaluate(response):
            text = response.strip()
            return any(c.isalpha() for c in text) and text == text.lower()
        ''',
        r'''
        import re

        def evaluate(response):
            return re.search(r"[A-Z]", response) is None and re.search(r"[a-z]", response) is not None
        ''',
        r'''
        def evaluate(response):
            letters = [c for c in response if c.isalpha()]
            return len(letters) > 0 and all(c.islower() for c in letters)
        ''',
    ],
    [
        ("basil likes bright light, so keep the pot on the sunniest sill and water it only "
         "when the top of the soil feels dry.", True),
        ("a list can be changed after you create it, while a tuple cannot. use a tuple for "
         "fixed records and a list for collections that grow.", True),
        ("it takes about 7 days for a sourdough starter to become active. feed it twice a day "
         "with equal weights of flour and water, and keep it near 24 degrees.", True),
        ("The sky turns red at sunset because sunlight passes through more air, which "
         "scatters the blue light away.", False),
        ("keep basil warm and near a south-facing window. water it sparingly in winter and "
         "pinch off the flowers so it stays bushy. I also turn the pot every week.", False),
        ("compound interest means you earn interest on your interest. a 5% rate on $1,000 "
         "gives $50 in the first year and a little more after that (the APR stays the same).",
         False),
        ("1, 2, 3!", False),
    ],
)

instruction(
    "Do not use a single capital letter anywhere in your answer",
    ["change_case:english_lowercase"],
    [
        r'''
        import string

        def evaluate(response):
            has_letter = any(c in string.ascii_letters for c in response)
            return has_letter and not any(c in string.ascii_uppercase for c in response)
        ''',
        r'''
        import re

        def evaluate(response):
            return bool(re.fullmatch(r"[^A-Z]*[a-z][^A-Z]*", response, re.DOTALL))
        ''',
    ],
    [
        ("cats knock things off tables because they are curious, they want your attention, "
         "and batting small objects is practice for hunting.", True),
        ("ask about the dog's age, health and history.\n\nthen ask how it gets on with "
         "children and other pets.", True),
        ("try ticket to ride, codenames and azul. all three take under an hour and work for "
         "four or more players.", True),
        ("cats knock things off tables because they are curious. It is also a way to get "
         "your attention.", False),
        ("try ticket to ride, codenames and azul. they all work well with teenagers, "
         "especially Codenames.", False),
        ("Ask about the dog's age, health and history before you sign anything.", False),
    ],
)

instruction(
    "Write the whole answer in capital letters",
    ["change_case:english_capital"],
    [
        r'''
        def evaluate(response):
            text = response.strip()
            return any(c.isalpha() for c in text) and text == text.upper()
        ''',
        r'''
        import re

        def evaluate(response):
            return re.search(r"[a-z]", response) is None and re.search(r"[A-Z]", response) is not None
        ''',
        r'''
        def evaluate(response):
            uppers = sum(1 for c in response if c.isupper())
            lowers = sum(1 for c in response if c.islower())
            return uppers > 0 and lowers == 0
        ''',
    ],
    [
        ("CATS KNOCK THINGS OFF TABLES TO GET YOUR ATTENTION AND TO TEST HOW OBJECTS MOVE. "
         "IT IS PLAY AND HUNTING PRACTICE AT THE SAME TIME.", True),
        ("PACK LAYERS, A RAIN JACKET, 3 LITRES OF WATER, SNACKS, A MAP AND A HEADLAMP. "
         "DON'T FORGET BLISTER PLASTERS!", True),
        ("A 5-MINUTE BREAKFAST: OATS, MILK AND A SLICED BANANA, MICROWAVED FOR 2 MINUTES.",
         True),
        ("CATS KNOCK THINGS OFF TABLES FOR ATTENTION. They also enjoy watching objects fall.",
         False),
        ("BRING ABOUT 2 LITRES OF WATER PER DAY AND KEEP YOUR PACK UNDER 10 kg.", False),
        ("TAKE PHOTOS IN NATURAL LIGHT AND WIPE THE LENS FIRST. ON AN iPHONE, TAP THE SCREEN "
         "TO SET THE FOCUS.", False),
        ("Sleep helps the brain store new memories.", False),
    ],
)

instruction(
    "Put at least three words in all capital letters for emphasis",
    ["change_case:capital_word_frequency"],
    [
        r'''
        import re

        def evaluate(response):
            return len(re.findall(r"(?<![A-Za-z])[A-Z]{2,}(?![A-Za-z])", response)) >= 3
        ''',
        r'''
        import re

        def evaluate(response):
            words = [w for w in re.split(r"[^A-Za-z]+", response) if len(w) >= 2]
            return sum(1 for w in words if w.isupper()) >= 3
        ''',
    ],
    [
        ("Always STRETCH after a run, NEVER bounce, and hold each stretch for THIRTY seconds.",
         True),
        ("Vaccines show the immune system a HARMLESS preview of a germ. It then builds "
         "antibodies and MEMORY cells, so the real infection is fought off FAST.", True),
        ("Store herbs like flowers: stems in water, in the FRIDGE, loosely covered. Basil is "
         "the exception, keep it OUT of the fridge. Change the water DAILY.", True),
        ("Change the water EVERY day and keep the jar AWAY from the window.", False),
        ("I think a seven-year-old would love a dinosaur dig in the sandbox, and I would add "
         "a fossil cake. A T. rex piñata is a must.", False),
        ("Inflation is mostly caused by demand outpacing supply, rising costs, and too much "
         "money chasing too few goods.", False),
    ],
)

# ---------------------------------------------------------------- length

instruction(
    "Keep the whole answer below 30 words",
    ["length_constraints:number_words"],
    [
        r'''
        def evaluate(response):
            words = [t for t in response.split() if any(c.isalnum() for c in t)]
            return len(words) < 30
        ''',
        r'''
        import re

        def evaluate(response):
            return len(re.findall(r"\S*[A-Za-z0-9]\S*", response)) < 30
        ''',
        r'''
        import re

        def evaluate(response):
            count = 0
            for token in re.split(r"\s+", response.strip()):
                if re.search(r"[A-Za-z0-9]", token):
                    count += 1
            return count <= 29
        ''',
    ],
    [
        ("Feed the starter equal weights of flour and water every day, keep it somewhere "
         "warm, and use it once it doubles within eight hours.", True),
        ("Mitochondria are the power plants of the cell. They turn sugar and oxygen into ATP, "
         "the molecule that carries energy, and they also help control when cells die.", True),
        ("Weather is today's rain or sun — climate is the average of that weather over "
         "thirty years or more.", True),
        ("Mitochondria are the power plants of the cell. They turn sugar and oxygen into ATP, "
         "the molecule that carries usable energy, and they also help control when old cells "
         "die.", False),
        ("Mitochondria are small structures inside most cells. They turn sugar and oxygen "
         "into ATP, the molecule that carries energy. They have their own DNA, which hints "
         "that they were once free-living bacteria. They also help decide when a damaged "
         "cell should die.", False),
        ("Here is a quick answer:\n- feed daily\n- keep warm\n- wait for bubbles\n- discard "
         "half before each feed\n- use it when it doubles in size within a few hours of "
         "feeding it fresh flour and water", False),
    ],
)

instruction(
    "Stay within a limit of 20 words",
    ["length_constraints:number_words"],
    [
        r'''
        def evaluate(response):
            return sum(1 for t in response.split() if any(ch.isalnum() for ch in t)) <= 20
        ''',
        r'''
        import re

        def evaluate(response):
            return len(re.findall(r"\S*[A-Za-z0-9]\S*", response)) <= 20
        ''',
    ],
    [
        ("Ask about the dog's history, health, energy level, and how it reacts to children, "
         "other dogs, and being left alone.", True),
        ("Try Ticket to Ride, Codenames and Azul.", True),
        ("Soak it, peel it, slice it thin — then fry it in butter until golden.", True),
        ("Ask about the dog's history, health, energy level, and how it reacts to children, "
         "other dogs, and being left alone all day.", False),
        ("Try Ticket to Ride for strategy, Codenames for laughs and Azul for something calm. "
         "All three play in under an hour with four people.", False),
        ("Good question! The short version is that a bill is drafted, debated, amended, voted "
         "on twice, and then signed into law.", False),
    ],
)

instruction(
    "Make the reply 60 words long or longer",
    ["length_constraints:number_words"],
    [
        r'''
        def evaluate(response):
            return len([t for t in response.split() if any(c.isalnum() for c in t)]) >= 60
        ''',
        r'''
        import re

        def evaluate(response):
            return len(re.findall(r"\S*[A-Za-z0-9]\S*", response)) >= 60
        ''',
    ],
    [
        ("A bill usually starts as a draft written by a government department. It is "
         "introduced in parliament and read for the first time without debate. At the second "
         "reading members debate its main ideas, and then a committee goes through it clause "
         "by clause and proposes amendments. After a third reading the other chamber repeats "
         "the process. Finally the head of state signs it and it becomes law.", True),
        ("Noise-cancelling headphones have small microphones on the outside of each ear cup. "
         "The microphones pick up steady background sound such as an engine hum. A chip "
         "inside then creates a sound wave that is the exact opposite of that noise and plays "
         "it through the speakers along with your music. When the two waves meet they cancel "
         "each other out, so you hear much less.", True),
        ("Touch typing is easier to learn as an adult than most people think. Put your "
         "fingers on the home row, look at the screen instead of the keys, and practise for "
         "fifteen minutes a day with a free typing tutor. Accuracy comes first and speed "
         "follows. After about a month most people stop looking down and type faster than "
         "before.", True),
        ("Touch typing is easier to learn as an adult than most people think. Put your "
         "fingers on the home row, look at the screen instead of the keys, and practise for "
         "fifteen minutes a day with a free typing tutor. Accuracy comes first and speed "
         "follows. After a month most people stop looking down and type faster than "
         "before.", False),
        ("Noise-cancelling headphones listen to the noise around you and play the opposite "
         "sound wave, so the two cancel out.", False),
        ("Sleep helps memory because the brain replays the day's experiences during deep "
         "sleep and moves them from short-term to long-term storage. Without enough sleep, "
         "new facts fade much faster.", False),
    ],
)

instruction(
    "Respond using precisely three sentences",
    ["length_constraints:number_sentences"],
    [
        r'''
        import re

        def evaluate(response):
            parts = re.split(r"[.!?]+(?:\s+|$)", response.strip())
            return sum(1 for p in parts if re.search(r"[A-Za-z0-9]", p)) == 3
        ''',
        r'''
        def evaluate(response):
            text = response.strip()
            count = 0
            has_content = False
            i = 0
            while i < len(text):
                c = text[i]
                if c in ".!?":
                    j = i
                    while j < len(text) and text[j] in ".!?":
                        j += 1
                    if j == len(text) or text[j].isspace():
                        if has_content:
                            count += 1
                        has_content = False
                    i = j
                    continue
                if c.isalnum():
                    has_content = True
                i += 1
            if has_content:
                count += 1
            return count == 3
        ''',
    ],
    [
        ("Seasons happen because Earth's axis is tilted. For half the year one hemisphere "
         "leans toward the Sun and gets more direct light. The other half it leans away, so "
         "days are shorter and colder.", True),
        ("Why keep a journal? It clears your head! Start with three lines a night.", True),
        ("Compound interest adds interest to your balance. At 4.5% a year, $1,000 becomes "
         "about $1,552 after ten years. The longer you wait, the faster it grows.", True),
        ("Seasons happen because Earth's axis is tilted. One hemisphere leans toward the Sun "
         "and gets more direct light. Half a year later it leans away. That is why winter "
         "days are short.", False),
        ("Seasons happen because Earth's axis is tilted, not because of our distance from the "
         "Sun. The hemisphere that leans toward the Sun has summer.", False),
        ("Earth's axis is tilted. The tilted hemisphere gets more light. It has summer.\n"
         "Hope that helps", False),
    ],
)

instruction(
    "Keep the answer to two sentences, no more and no fewer",
    ["length_constraints:number_sentences"],
    [
        r'''
        import re

        def evaluate(response):
            chunks = re.split(r"(?<=[.!?])\s+", response.strip())
            sentences = [c for c in chunks if any(ch.isalnum() for ch in c)]
            return len(sentences) == 2
        ''',
        r'''
        import re

        def evaluate(response):
            text = response.strip()
            enders = re.findall(r"[.!?]+(?=\s|$)", text)
            pieces = re.split(r"[.!?]+(?=\s|$)", text)
            filled = [p for p in pieces if re.search(r"[A-Za-z0-9]", p)]
            return len(filled) == 2 and len(enders) >= 1
        ''',
    ],
    [
        ("Baking soda is pure sodium bicarbonate and needs an acid to react. Baking powder "
         "already contains the acid, so it works on its own.", True),
        ("Leaves change colour because trees stop making chlorophyll in autumn. The yellow "
         "and orange pigments that were hidden underneath then show through!", True),
        ("Fresh light is everything! Shoot near a window, tap to focus and keep the lens "
         "clean.", True),
        ("Baking soda needs an acid. Baking powder already has one. Both make dough rise.",
         False),
        ("Baking soda is pure sodium bicarbonate, which needs an acid such as buttermilk to "
         "react, while baking powder already contains the acid and works on its own.", False),
        ("Leaves change colour because trees stop making chlorophyll. Hidden yellow pigments "
         "then show through... and red ones are made fresh in autumn.", False),
    ],
)

instruction(
    "Say it in two sentences or fewer",
    ["length_constraints:number_sentences"],
    [
        r'''
        import re

        def evaluate(response):
            parts = [p for p in re.split(r"[.!?]+(?:\s+|$)", response.strip()) if re.search(r"\w", p)]
            return 1 <= len(parts) <= 2
        ''',
        r'''
        def evaluate(response):
            text = response.strip() + " "
            sentences = 0
            content = False
            for i, c in enumerate(text[:-1]):
                if c.isalnum() or c == "_":
                    content = True
                elif c in ".!?" and text[i + 1] not in ".!?" and (text[i + 1].isspace()):
                    if content:
                        sentences += 1
                    content = False
            if content:
                sentences += 1
            return 0 < sentences < 3
        ''',
    ],
    [
        ("Thank your manager for the invite and say you cannot attend because of a clash. "
         "Offer to read the notes or send an update instead.", True),
        ("Reply with a short, friendly note saying you have a conflict and ask whether the "
         "notes will be shared.", True),
        ("Decline politely! Suggest another time if the meeting matters to you", True),
        ("Thank your manager for the invite. Say you have a clash. Offer to read the notes "
         "instead.", False),
        ("Be polite and brief. Give a reason if you can. Offer an alternative.\nGood luck!",
         False),
        ("Say thanks for the invite. Explain the clash! Would reading the notes work?", False),
    ],
)

instruction(
    "Reply in one sentence only",
    ["length_constraints:number_sentences"],
    [
        r'''
        import re

        def evaluate(response):
            text = response.strip()
            pieces = [p for p in re.split(r"[.!?]+(?:\s+|$)", text) if re.search(r"[A-Za-z0-9]", p)]
            return len(pieces) == 1
        ''',
        r'''
        import re

        def evaluate(response):
            text = response.strip()
            if not re.search(r"[A-Za-z0-9]", text):
                return False
            inner = re.sub(r"[.!?]+$", "", text)
            return re.search(r"[.!?]\s", inner) is None
        ''',
    ],
    [
        ("Recursion is when a function solves a problem by calling itself on a smaller "
         "version of the same problem until it reaches a case simple enough to answer "
         "directly.", True),
        ("Think of Russian dolls: you open each one to find a smaller one, until the last "
         "doll does not open at all.", True),
        ("A function that calls itself, with a stopping rule", True),
        ("Recursion is when a function calls itself. It stops at a simple base case.", False),
        ("Think of Russian dolls! Each one holds a smaller one until the last.", False),
        ("Recursion means a function calls itself on a smaller input... and stops at a base "
         "case.", False),
    ],
)

# ---------------------------------------------------------------- punctuation

instruction(
    "Leave every comma out of your reply",
    ["punctuation:no_comma"],
    [
        r'''
        def evaluate(response):
            return "," not in response
        ''',
        r'''
        def evaluate(response):
            return response.count(",") == 0
        ''',
        r'''
        import re

        def evaluate(response):
            return len(re.findall(",", response)) == 0
        ''',
    ],
    [
        ("Put the herbs in a jar of water and cover them loosely with a bag. Keep them in the "
         "fridge and change the water every two days.", True),
        ("Weather is what happens today while climate is the pattern over decades.", True),
        ("Save 1000 euros a year at 5 percent and you earn interest on your interest too.",
         True),
        ("Yes, you can keep herbs in the fridge.", False),
        ("Save 1,000 euros a year at 5 percent and the interest compounds.", False),
        ("Weather changes by the hour while climate describes the long-run average of rain "
         "and temperature in a place, usually over thirty years.", False),
    ],
)

instruction(
    "Avoid exclamation marks entirely",
    [],
    [
        r'''
        def evaluate(response):
            return "!" not in response
        ''',
        r'''
        import re

        def evaluate(response):
            return re.search(r"!", response) is None
        ''',
    ],
    [
        ("Noise-cancelling headphones record outside sound and play the opposite wave. The "
         "two cancel out.", True),
        ("Use a list when the items will change and a tuple when they will not.", True),
        ("Great question. Cats knock things over because it gets a reaction.", True),
        ("Great question! Cats knock things over because it gets a reaction.", False),
        ("In Python you can test whether two lists differ with `a != b`.", False),
        ("Pack layers, water and snacks. Have a great hike!", False),
    ],
)

instruction(
    "Finish your reply with a question for the reader",
    [],
    [
        r'''
        def evaluate(response):
            return response.rstrip("\"')* \n\t").endswith("?")
        ''',
        r'''
        import re

        def evaluate(response):
            return re.search(r"\?[\"')*\s]*$", response) is not None
        ''',
    ],
    [
        ("Start with a jar, flour and water, and feed it daily for a week. What kind of flour "
         "do you have at home?", True),
        ("A dinosaur dig in the sandbox and a fossil cake are always a hit. Would your son "
         "prefer a park or a party at home?", True),
        ("Ask the shelter: \"Has this dog lived with cats, and how does it react to "
         "strangers?\"", True),
        ("Would a dinosaur dig be fun? The kids can dig up plastic bones in the sandbox.",
         False),
        ("Let me know what you think.", False),
        ("Does that answer your question?!", False),
    ],
)

# ---------------------------------------------------------------- start / end

instruction(
    "Begin your reply with the word 'Sure'",
    ["length_constraints:nth_paragraph_first_word"],
    [
        r'''
        import re

        def evaluate(response):
            m = re.match(r"\W*(\w+)", response)
            return m is not None and m.group(1).lower() == "sure"
        ''',
        r'''
        import string

        def evaluate(response):
            words = response.split()
            return bool(words) and words[0].strip(string.punctuation).lower() == "sure"
        ''',
    ],
    [
        ("Sure! Keep basil in the sunniest window you have and water it only when the soil is "
         "dry.", True),
        ("sure, here is a plan for Lisbon: Alfama and the castle on Saturday, Belem and the "
         "riverside on Sunday.", True),
        ("**Sure**. Compound interest means you earn interest on the interest you already "
         "earned.", True),
        ("Surely the easiest way is to keep the pot near a bright window.", False),
        ("Of course! Sure thing, here is a weekend plan for Lisbon.", False),
        ("Yes, sure. Compound interest grows your savings faster every year.", False),
    ],
)

instruction(
    "Make 'Honestly' the first word of your answer",
    ["length_constraints:nth_paragraph_first_word"],
    [
        r'''
        import re

        def evaluate(response):
            words = re.findall(r"[A-Za-z']+", response)
            return bool(words) and words[0].lower() == "honestly"
        ''',
        r'''
        def evaluate(response):
            text = response.lstrip(" \n\t\"'*_#").lower()
            if not text.startswith("honestly"):
                return False
            rest = text[len("honestly"):]
            return rest == "" or not rest[0].isalpha()
        ''',
    ],
    [
        ("Honestly, the best way to learn touch typing is fifteen minutes of practice every "
         "day.", True),
        ("HONESTLY? Most cafes win weekday customers with a loyalty card and a quiet corner "
         "for laptops.", True),
        ("\"Honestly\" is how I would start: working from home saves time but can feel "
         "lonely.", True),
        ("To be honest, working from home saves time but can feel lonely.", False),
        ("I honestly think fifteen minutes of practice a day is enough.", False),
        ("Honest answer: a loyalty card and a quiet corner for laptops work well.", False),
    ],
)

instruction(
    "Let \"Hope this helps\" be the very last words of your answer, written exactly like that",
    ["startend:end_checker"],
    [
        r'''
        import re

        def evaluate(response):
            return re.search(r"Hope this helps[.!]*\s*$", response) is not None
        ''',
        r'''
        def evaluate(response):
            return response.strip().rstrip(".!").endswith("Hope this helps")
        ''',
    ],
    [
        ("Pack warm layers, a rain shell, two litres of water a day, snacks and a map. Hope "
         "this helps.", True),
        ("Thank your manager, mention the clash and offer to read the notes.\n\nHope this "
         "helps!", True),
        ("Keep the starter warm and feed it daily. Hope this helps", True),
        ("Pack warm layers and a map. hope this helps.", False),
        ("Hope this helps. Enjoy the hike and stay safe!", False),
        ("Pack warm layers and plenty of water. I hope this helps you plan.", False),
    ],
)

instruction(
    "Close your reply with the words \"thanks for asking\"",
    ["startend:end_checker"],
    [
        r'''
        def evaluate(response):
            text = response.strip().rstrip(".!?").lower()
            return text == "thanks for asking" or text.endswith(" thanks for asking")
        ''',
        r'''
        import re

        def evaluate(response):
            return re.search(r"(?:^|\W)thanks for asking[.!?]*$", response.strip(), re.IGNORECASE) is not None
        ''',
    ],
    [
        ("Inflation comes from demand outrunning supply and from rising costs. Thanks for "
         "asking!", True),
        ("Mitochondria turn food into usable energy for the cell. Thanks for asking.", True),
        ("Good question, and THANKS FOR ASKING", True),
        ("Thanks for asking! Inflation comes from demand outrunning supply.", False),
        ("Mitochondria turn food into energy. Thank you for asking.", False),
        ("Inflation has many causes, and thanks for asking about it.", False),
    ],
)

# ---------------------------------------------------------------- wrapping

instruction(
    "Enclose the full reply between two double-quote characters",
    ["startend:quotation"],
    [
        r'''
        def evaluate(response):
            text = response.strip()
            return len(text) >= 2 and text[0] in "\"“" and text[-1] in "\"”"
        ''',
        r'''
        import re

        def evaluate(response):
            return re.fullmatch(r"\s*[\"“].*[\"”]\s*", response, re.DOTALL) is not None
        ''',
    ],
    [
        ("\"Weather is the state of the air today; climate is the average over thirty "
         "years.\"", True),
        ("\"Bring layers.\nBring water.\nBring a map.\"", True),
        ("“Touch typing is learned in short daily sessions.”", True),
        ("Weather is today; climate is the long-run average.", False),
        ("\"Touch typing\" is best learned with short daily drills.", False),
        ("My advice: \"keep it short and polite.\"", False),
    ],
)

instruction(
    "Format the whole reply as a valid JSON object",
    ["detectable_format:json_format"],
    [
        r'''
        import json

        def evaluate(response):
            text = response.strip()
            if len(text) >= 6 and text.startswith("```") and text.endswith("```"):
                text = text[3:-3]
                if text.lower().startswith("json"):
                    text = text[4:]
            try:
                value = json.loads(text)
            except ValueError:
                return False
            return isinstance(value, dict)
        ''',
        r'''
        import json
        import re

        def evaluate(response):
            text = response.strip()
            fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.DOTALL | re.IGNORECASE)
            if fenced:
                text = fenced.group(1)
            if not (text.startswith("{") and text.endswith("}")):
                return False
            try:
                json.loads(text)
            except json.JSONDecodeError:
                return False
            return True
        ''',
    ],
    [
        ("{\"answer\": \"Cats push things off tables to play and to get attention.\"}", True),
        ("```json\n{\n  \"tips\": [\"clean the lens\", \"use window light\", \"tap to "
         "focus\"]\n}\n```", True),
        ("{\"saturday\": {\"morning\": \"Alfama\", \"evening\": \"Bairro Alto\"}, "
         "\"sunday\": {\"morning\": \"Belem\"}}", True),
        ("Here is the JSON: {\"answer\": \"Cats like attention.\"}", False),
        ("{'tip': 'clean the lens', 'light': 'window'}", False),
        ("[\"clean the lens\", \"use window light\"]", False),
        ("{\"tips\": [\"clean the lens\", \"use window light\",]}", False),
    ],
)

instruction(
    "Reply with a JSON object that has a single key \"answer\"",
    ["detectable_format:json_format"],
    [
        r'''
        import json

        def evaluate(response):
            text = response.strip()
            if text.startswith("```") and text.endswith("```") and len(text) >= 6:
                text = text[3:-3].strip()
                if text[:4].lower() == "json":
                    text = text[4:]
            try:
                data = json.loads(text)
            except ValueError:
                return False
            return isinstance(data, dict) and list(data.keys()) == ["answer"]
        ''',
        r'''
        import json
        import re

        def evaluate(response):
            m = re.fullmatch(r"\s*(?:```(?:json)?\s*(\{.*\})\s*```|(\{.*\}))\s*", response, re.DOTALL | re.IGNORECASE)
            if m is None:
                return False
            try:
                obj = json.loads(m.group(1) or m.group(2))
            except json.JSONDecodeError:
                return False
            return len(obj) == 1 and "answer" in obj
        ''',
    ],
    [
        ("{\"answer\": \"Vaccines show the immune system a harmless copy of a germ so it can "
         "build defences in advance.\"}", True),
        ("```json\n{\"answer\": \"Stretch your calves, hamstrings and hips for 30 seconds "
         "each.\"}\n```", True),
        ("{\"answer\": [\"Ticket to Ride\", \"Codenames\", \"Azul\"]}", True),
        ("{\"answer\": \"Ticket to Ride\", \"reason\": \"easy to learn\"}", False),
        ("{\"Answer\": \"Vaccines train the immune system with a harmless copy of a germ.\"}",
         False),
        ("The answer is: vaccines train the immune system.", False),
    ],
)

instruction(
    "Place your whole answer inside one markdown code block",
    [],
    [
        r'''
        def evaluate(response):
            text = response.strip()
            return (text.startswith("```") and text.endswith("```")
                    and text.count("```") == 2 and "\n" in text)
        ''',
        r'''
        def evaluate(response):
            lines = response.strip().splitlines()
            if len(lines) < 2:
                return False
            fences = [line for line in lines if line.lstrip().startswith("```")]
            return lines[0].startswith("```") and lines[-1].strip() == "```" and len(fences) == 2
        ''',
    ],
    [
        ("```\nDay 1: mix 50 g flour with 50 g water\nDay 2-7: discard half, feed again\nReady "
         "when it doubles in 6 hours\n```", True),
        ("```text\nBlue light scatters more in the air, so at sunset only red and orange reach "
         "your eyes.\n```", True),
        ("```python\nitems = [1, 2, 3]   # a list can change\npoint = (1, 2)      # a tuple "
         "cannot\n```", True),
        ("Here is the code:\n```python\npoint = (1, 2)\n```", False),
        ("```\nDay 1: mix flour and water\n```\n```\nDay 2: feed again\n```", False),
        ("```\nDay 1: mix flour and water\nDay 2: feed again", False),
        ("```text\nBlue light scatters more at sunset.\n```\nSo the sky looks red.", False),
    ],
)

# ---------------------------------------------------------------- lists

instruction(
    "List exactly three points, each on its own line starting with an asterisk and a space",
    ["detectable_format:number_bullet_lists"],
    [
        r'''
        def evaluate(response):
            return sum(1 for line in response.splitlines() if line.lstrip().startswith("* ")) == 3
        ''',
        r'''
        import re

        def evaluate(response):
            return len(re.findall(r"^[ \t]*\* ", response, re.MULTILINE)) == 3
        ''',
    ],
    [
        ("Three ways to cut your bill:\n* Switch to LED bulbs\n* Turn the heating down one "
         "degree\n* Unplug chargers when not in use", True),
        ("* Clean the lens\n* Use window light\n* Tap to focus before you shoot", True),
        ("* Ticket to Ride\n* Codenames\n* Azul\n\nAll three are easy to teach.", True),
        ("* Switch to LED bulbs\n* Lower the heating\n* Unplug chargers\n* Wash at 30 degrees",
         False),
        ("- Clean the lens\n- Use window light\n- Tap to focus", False),
        ("**Tips:**\n* Clean the lens\n* Use window light", False),
    ],
)

instruction(
    "Give exactly four bullet points, each line beginning with a dash and a space",
    ["detectable_format:number_bullet_lists"],
    [
        r'''
        def evaluate(response):
            bullets = [line for line in response.split("\n") if line.strip().startswith("- ")]
            return len(bullets) == 4
        ''',
        r'''
        import re

        def evaluate(response):
            return len(re.findall(r"(?m)^\s*- ", response)) == 4
        ''',
    ],
    [
        ("- Water boots and socks\n- A warm layer and a rain shell\n- Snacks and two litres "
         "of water\n- A map and a headlamp", True),
        ("For a cafe on weekdays:\n- Offer a lunch deal\n- Host a quiz night\n- Start a "
         "loyalty card\n- Welcome remote workers with fast wifi", True),
        ("- Breathe\n- Pause\n- Answer\n- Follow up\n\nThat order works well in interviews.",
         True),
        ("- Offer a lunch deal\n- Host a quiz night\n- Start a loyalty card", False),
        ("* Offer a lunch deal\n* Host a quiz night\n* Start a loyalty card\n* Welcome remote "
         "workers", False),
        ("- Boots\n- Layers\n---\n- Water\n- Map\n- Headlamp", False),
    ],
)

instruction(
    "Structure the answer around two bullet points, no more and no fewer",
    ["detectable_format:number_bullet_lists"],
    [
        r'''
        import re

        def evaluate(response):
            return len(re.findall(r"^[ \t]*[*\-•][ \t]+\S", response, re.MULTILINE)) == 2
        ''',
        r'''
        def evaluate(response):
            count = 0
            for line in response.splitlines():
                s = line.lstrip(" \t")
                if len(s) > 2 and s[0] in "*-•" and s[1] in " \t" and s[2:].strip():
                    count += 1
            return count == 2
        ''',
    ],
    [
        ("* Pros: no commute and flexible hours\n* Cons: fewer casual chats and blurred "
         "work-life lines", True),
        ("- Ask about its health history\n- Ask how it behaves with children", True),
        ("Here you go:\n• Keep herbs in water in the fridge\n• Keep basil on the counter "
         "instead", True),
        ("- Ask about its health\n- Ask about its temper\n- Ask about its diet", False),
        ("Pros: no commute. Cons: fewer chats with colleagues.", False),
        ("* Pros: no commute\n\n*Cons:* fewer chats with colleagues", False),
    ],
)

instruction(
    "Lay out your answer as a numbered list with at least three items",
    [],
    [
        r'''
        import re

        def evaluate(response):
            return len(re.findall(r"^\s*\d+[.)]\s+\S", response, re.MULTILINE)) >= 3
        ''',
        r'''
        def evaluate(response):
            items = 0
            for line in response.splitlines():
                parts = line.split(None, 1)
                if len(parts) < 2:
                    continue
                marker = parts[0]
                if marker[-1] in ".)" and marker[:-1].isdigit():
                    items += 1
            return items >= 3
        ''',
    ],
    [
        ("1. Mix flour and water\n2. Leave it somewhere warm\n3. Feed it every day", True),
        ("A simple routine after a run:\n1) Calf stretch\n2) Hamstring stretch\n3) Quad "
         "stretch\n4) Hip flexor lunge\n5) Child's pose", True),
        ("  1. Get a notebook\n  2. Write three lines every night\n  3. Read them back on "
         "Sundays", True),
        ("- Mix flour and water\n- Leave it somewhere warm\n- Feed it every day", False),
        ("1. Calf stretch\n2. Hamstring stretch", False),
        ("Do this: 1. mix flour and water 2. leave it warm 3. feed it daily.", False),
        ("Step one: get a notebook.\nStep two: write every night.\nStep three: read it back.",
         False),
    ],
)

# ---------------------------------------------------------------- structure

instruction(
    "Put a title in double angle brackets, such as <<A Short Guide>>, on the first line",
    ["detectable_format:title"],
    [
        r'''
        def evaluate(response):
            lines = [line.strip() for line in response.splitlines() if line.strip()]
            if not lines:
                return False
            first = lines[0]
            inner = first[2:-2]
            return (first.startswith("<<") and first.endswith(">>") and len(first) > 4
                    and "<" not in inner and ">" not in inner and inner.strip() != "")
        ''',
        r'''
        import re

        def evaluate(response):
            return re.match(r"\s*<<[^<>\n]*[^<>\s][^<>\n]*>>[ \t]*(?:\n|$)", response) is not None
        ''',
    ],
    [
        ("<<Winter Basil Care>>\n\nKeep the pot in your brightest window and water only when "
         "the soil is dry.", True),
        ("<<Lisbon in Two Days>>\nSaturday: Alfama and the castle. Sunday: Belem and the "
         "river.", True),
        ("\n<<How Vaccines Teach the Body>>\nA vaccine shows the immune system a harmless "
         "copy of a germ.", True),
        ("Here is my answer.\n<<Winter Basil Care>>\nKeep the pot in a bright window.", False),
        ("<Lisbon in Two Days>\nSaturday: Alfama. Sunday: Belem.", False),
        ("**How Vaccines Teach the Body**\nA vaccine shows the immune system a harmless copy "
         "of a germ.", False),
        ("<<>>\nKeep the pot in a bright window.", False),
    ],
)

instruction(
    "Give the answer a heading enclosed in << and >>",
    ["detectable_format:title"],
    [
        r'''
        import re

        def evaluate(response):
            return re.search(r"<<[^<>\n]*[A-Za-z0-9][^<>\n]*>>", response) is not None
        ''',
        r'''
        def evaluate(response):
            start = response.find("<<")
            while start != -1:
                end = response.find(">>", start + 2)
                if end == -1:
                    return False
                inner = response[start + 2:end]
                if "\n" not in inner and "<" not in inner and ">" not in inner and any(c.isalnum() for c in inner):
                    return True
                start = response.find("<<", start + 2)
            return False
        ''',
    ],
    [
        ("<<Why Inflation Happens>>\nPrices rise when demand outruns supply or costs go up.",
         True),
        ("Sure, here it is.\n\n<<Three Family Games>>\nTicket to Ride, Codenames and Azul.",
         True),
        ("My heading is <<Sleep and Memory>> and the short answer is that sleep moves "
         "memories into long-term storage.", True),
        ("« Why Inflation Happens »\nPrices rise when demand outruns supply.", False),
        ("< Three Family Games >\nTicket to Ride, Codenames and Azul.", False),
        ("<<\nSleep and Memory\n>>\nSleep moves memories into long-term storage.", False),
        ("Sleep moves memories into long-term storage.", False),
    ],
)

instruction(
    "Sign off with a last line that begins with \"P.S.\"",
    ["detectable_content:postscript"],
    [
        r'''
        def evaluate(response):
            lines = [line.strip() for line in response.splitlines() if line.strip()]
            return bool(lines) and lines[-1].lower().startswith("p.s.")
        ''',
        r'''
        import re

        def evaluate(response):
            return re.search(r"(?:^|\n)[ \t]*[Pp]\.[Ss]\.[^\n]*\s*$", response) is not None
        ''',
    ],
    [
        ("Keep basil warm and in bright light, and water it sparingly.\n\nP.S. Turn the pot a "
         "little every few days so it grows evenly.", True),
        ("Thank your neighbour for keeping the plants alive while you were away.\np.s. A "
         "small box of chocolates goes a long way.", True),
        ("Dear Sam,\nThank you so much for watering my plants.\nBest, Alex\nP.S. The tomatoes "
         "are yours to pick!", True),
        ("P.S. Turn the pot every few days.\nKeep basil warm and in bright light.", False),
        ("Keep basil warm and in bright light. P.S. turn the pot every few days.", False),
        ("Thank your neighbour for the help.\nPS: chocolates are always welcome.", False),
    ],
)

instruction(
    "Split your answer into two paragraphs separated by a blank line",
    ["length_constraints:number_paragraphs"],
    [
        r'''
        import re

        def evaluate(response):
            paragraphs = [p for p in re.split(r"\n\s*\n", response.strip()) if p.strip()]
            return len(paragraphs) == 2
        ''',
        r'''
        def evaluate(response):
            blocks = 0
            inside = False
            for line in response.splitlines():
                if line.strip():
                    if not inside:
                        blocks += 1
                    inside = True
                else:
                    inside = False
            return blocks == 2
        ''',
    ],
    [
        ("Working from home saves the commute and gives you flexible hours.\n\nOn the other "
         "hand, it can feel lonely and the line between work and rest blurs.", True),
        ("Vaccines contain a harmless piece or copy of a germ. The immune system learns to "
         "recognise it.\n\nLater, if the real germ arrives, memory cells react fast and stop "
         "the infection early.", True),
        ("Weather is short term.\n   \nClimate is the long-term average.", True),
        ("Working from home saves the commute.\nIt can also feel lonely.", False),
        ("Working from home saves the commute.\n\nIt gives you flexible hours.\n\nIt can "
         "feel lonely.", False),
        ("Weather is short term and climate is the long-term average of weather in a place.",
         False),
    ],
)

instruction(
    "Write three paragraphs with an empty line between each",
    ["length_constraints:number_paragraphs"],
    [
        r'''
        def evaluate(response):
            chunks = response.strip().replace("\r\n", "\n").split("\n\n")
            return len([c for c in chunks if c.strip()]) == 3 and all(c.strip() for c in chunks)
        ''',
        r'''
        import re

        def evaluate(response):
            return len([p for p in re.split(r"\n[ \t]*\n", response) if p.strip()]) == 3
        ''',
    ],
    [
        ("A bill starts as a draft.\n\nParliament debates and amends it in several "
         "readings.\n\nThe head of state signs it and it becomes law.", True),
        ("Cats are curious.\n\nThey also want your attention, and a falling cup gets it "
         "fast.\n\nFinally, swatting things is hunting practice.", True),
        ("Gears trade speed for force.\nA small front ring makes each pedal turn easier.\n\n"
         "On a hill you shift down so your legs can keep a steady rhythm.\n\nYou go slower "
         "but you can keep climbing.", True),
        ("A bill starts as a draft.\n\nParliament debates and amends it, and then the head of "
         "state signs it.", False),
        ("Cats are curious.\nThey want attention.\nSwatting is hunting practice.", False),
        ("Gears trade speed for force.\n\nShift down on hills.\n\nYour legs keep a steady "
         "rhythm.\n\nYou keep climbing.", False),
    ],
)

instruction(
    "Divide your answer into two parts headed \"Section 1\" and \"Section 2\"",
    ["detectable_format:multiple_sections"],
    [
        r'''
        import re

        def evaluate(response):
            labels = re.findall(r"^[ \t#*]*section[ \t]+(\d+)", response, re.IGNORECASE | re.MULTILINE)
            return labels == ["1", "2"]
        ''',
        r'''
        def evaluate(response):
            numbers = []
            for line in response.splitlines():
                parts = line.lstrip(" \t#*").split()
                if len(parts) >= 2 and parts[0].lower() == "section":
                    number = parts[1].rstrip(":.*-")
                    if number.isdigit():
                        numbers.append(number)
            return numbers == ["1", "2"]
        ''',
    ],
    [
        ("Section 1\nPros: no commute, flexible hours.\n\nSection 2\nCons: less contact with "
         "colleagues.", True),
        ("## Section 1: Before the interview\nResearch the product and the founders.\n## "
         "Section 2: During the interview\nAsk how they measure success.", True),
        ("**Section 1** Mix flour and water.\n**Section 2** Feed it daily for a week.", True),
        ("Section 1\nPros: no commute.\nSection 2\nCons: less contact.\nSection 3\nTips: keep "
         "a routine.", False),
        ("Part 1\nPros: no commute.\nPart 2\nCons: less contact.", False),
        ("Section 1\nMix flour and water and feed it daily for a week.", False),
    ],
)

instruction(
    "Organise the reply into three parts labelled \"Section 1\", \"Section 2\" and "
    "\"Section 3\"",
    ["detectable_format:multiple_sections"],
    [
        r'''
        import re

        def evaluate(response):
            found = [int(n) for n in re.findall(r"(?im)^[ \t#*]*section[ \t]+(\d+)", response)]
            return found == [1, 2, 3]
        ''',
        r'''
        import re

        def evaluate(response):
            seen = []
            for line in response.split("\n"):
                m = re.match(r"[\s#*]*section\s+(\d+)", line, re.IGNORECASE)
                if m:
                    seen.append(m.group(1))
            return seen == ["1", "2", "3"]
        ''',
    ],
    [
        ("Section 1\nPack layers.\nSection 2\nPack food and water.\nSection 3\nPack a map and "
         "a headlamp.", True),
        ("# Section 1 - Causes\nDemand outruns supply.\n# Section 2 - Effects\nSavings lose "
         "value.\n# Section 3 - Remedies\nCentral banks raise rates.", True),
        ("SECTION 1: Light. Use a window.\n\nSECTION 2: Focus. Tap the subject.\n\nSECTION 3: "
         "Lens. Wipe it clean.", True),
        ("Section 1\nPack layers.\nSection 2\nPack food and water.", False),
        ("Section 1\nLight.\nSection 3\nFocus.\nSection 2\nLens.", False),
        ("Part 1: causes. Part 2: effects. Part 3: remedies.", False),
    ],
)

# ---------------------------------------------------------------- keywords

instruction(
    "Say the word \"simple\" two or more times",
    ["keywords:frequency", "keywords:existence"],
    [
        r'''
        import re

        def evaluate(response):
            return len(re.findall(r"\bsimple\b", response, re.IGNORECASE)) >= 2
        ''',
        r'''
        import re

        def evaluate(response):
            return re.findall(r"[a-z]+", response.lower()).count("simple") >= 2
        ''',
    ],
    [
        ("The water cycle is simple: water evaporates, forms clouds and falls as rain. A "
         "simple way to picture it is a pot with a lid.", True),
        ("Simple habits work best. Keep commit messages short, simple and in the imperative "
         "mood.", True),
        ("Recursion is simple-minded at first glance. It is simple once you trust the base "
         "case.", True),
        ("The water cycle is simple: water evaporates, condenses and falls again.", False),
        ("Keep commit messages short and simply worded; simpler is better.", False),
        ("Recursion looks hard but becomes easy once you trust the base case.", False),
    ],
)

instruction(
    "Include the word \"because\" at least three times",
    ["keywords:frequency", "keywords:existence"],
    [
        r'''
        import re

        def evaluate(response):
            return len(re.findall(r"\bbecause\b", response.lower())) >= 3
        ''',
        r'''
        import string

        def evaluate(response):
            cleaned = "".join(c.lower() if c not in string.punctuation else " " for c in response)
            return cleaned.split().count("because") >= 3
        ''',
    ],
    [
        ("Leaves turn yellow because chlorophyll breaks down, red because trees make new "
         "pigments, and brown because the cells die.", True),
        ("Sleep matters because the brain replays the day. Because of that replay, memories "
         "move to long-term storage. Skip sleep and they fade, because nothing fixes them.",
         True),
        ("Because prices rise with demand, because costs go up, and because money supply "
         "grows, we get inflation.", True),
        ("Leaves turn yellow because chlorophyll breaks down, and red since trees make new "
         "pigments.", False),
        ("Sleep matters because the brain replays the day; that is why memories stick, "
         "'cause they get stored.", False),
        ("Inflation happens for many reasons: demand, costs and money supply.", False),
    ],
)

instruction(
    "Never use the word \"very\"",
    ["keywords:forbidden_words"],
    [
        r'''
        import re

        def evaluate(response):
            return re.search(r"\bvery\b", response, re.IGNORECASE) is None
        ''',
        r'''
        import re

        def evaluate(response):
            return "very" not in re.findall(r"[a-z]+", response.lower())
        ''',
    ],
    [
        ("Every morning, stretch your calves and hamstrings for thirty seconds each.", True),
        ("Avery's tip: keep the interview answers short and concrete.", True),
        ("This routine is quick, gentle and effective.", True),
        ("This routine is very quick and gentle.", False),
        ("Very good question! Stretch your calves first.", False),
        ("Keep answers short. Be concrete, very concrete.", False),
    ],
)

instruction(
    "Leave out the word \"just\" entirely",
    ["keywords:forbidden_words"],
    [
        r'''
        import re

        def evaluate(response):
            return not re.search(r"(?i)(?<![a-z])just(?![a-z])", response)
        ''',
        r'''
        import string

        def evaluate(response):
            words = [w.strip(string.punctuation).lower() for w in response.split()]
            return "just" not in words
        ''',
    ],
    [
        ("Adjust the gears before the hill so your legs keep a steady rhythm.", True),
        ("A fair system needs justice and clear rules for every bill.", True),
        ("Shift to a lower gear before the climb starts.", True),
        ("Just shift to a lower gear before the climb.", False),
        ("Shift down before the hill, that's just how gears work.", False),
        ("You only need to shift down. Just.", False),
    ],
)

# ---------------------------------------------------------------- letters

instruction(
    "Let the letter 'k' show up five or more times",
    ["keywords:letter_frequency"],
    [
        r'''
        def evaluate(response):
            return response.lower().count("k") >= 5
        ''',
        r'''
        def evaluate(response):
            return sum(1 for c in response if c in "kK") >= 5
        ''',
        r'''
        import re

        def evaluate(response):
            return len(re.findall("k", response, re.IGNORECASE)) >= 5
        ''',
    ],
    [
        ("Keep a notebook by the bed and make a quick note each night; kindness to yourself "
         "keeps the habit alive.", True),
        ("Pack snacks, a jacket, a knife and a backup headlamp.", True),
        ("Kick off with kale, kiwi and a kettle of tea.", True),
        ("Pack snacks, a jacket and a headlamp for the hike.", False),
        ("Keep a notebook by the bed and write a line each night.", False),
        ("Cats knock cups off tables to get attention.", False),
    ],
)

instruction(
    "Use the letter 'z' at least twice",
    ["keywords:letter_frequency"],
    [
        r'''
        def evaluate(response):
            return response.lower().count("z") >= 2
        ''',
        r'''
        import re

        def evaluate(response):
            return len(re.findall(r"[zZ]", response)) > 1
        ''',
    ],
    [
        ("Freeze the pizza dough in a zip bag.", True),
        ("Amazing views await at the Zugspitze.", True),
        ("Organize your desk and prioritize the hardest task first.", True),
        ("Freeze the dough in a sealed bag.", False),
        ("Organise your desk and prioritise the hardest task first.", False),
        ("Zero-waste shopping starts with a reusable bag.", False),
    ],
)

# ---------------------------------------------------------------- placeholders

instruction(
    "Leave at least two blanks for the reader to fill in, written in square brackets like [name]",
    ["detectable_content:number_placeholders"],
    [
        r'''
        import re

        def evaluate(response):
            return len(re.findall(r"\[[^\[\]\n]*\S[^\[\]\n]*\]", response)) >= 2
        ''',
        r'''
        def evaluate(response):
            count = 0
            i = response.find("[")
            while i != -1:
                j = response.find("]", i + 1)
                if j == -1:
                    break
                inner = response[i + 1:j]
                if inner.strip() and "[" not in inner and "\n" not in inner:
                    count += 1
                    i = response.find("[", j + 1)
                else:
                    i = response.find("[", i + 1)
            return count >= 2
        ''',
    ],
    [
        ("Dear [Hiring Manager],\nI am applying for the librarian position at [Library "
         "Name].", True),
        ("Hi [neighbour's name], thank you for watering my plants while I was in [city]. "
         "Yours, [your name]", True),
        ("Meet at [time] near [place].", True),
        ("Dear [Hiring Manager],\nI am applying for the librarian position at your library.",
         False),
        ("Hi {name}, thank you for watering my plants while I was in {city}.", False),
        ("Meet at [] near [ ].", False),
    ],
)

# ---------------------------------------------------------------- seed-style constraints

instruction(
    "Use no words containing the letter 'z'",
    ["keywords:letter_frequency"],
    [
        r'''
        def evaluate(response):
            return "z" not in response.lower()
        ''',
        r'''
        import re

        def evaluate(response):
            return not re.findall(r"\w*[zZ]\w*", response)
        ''',
    ],
    [
        ("Organise your desk and start with the hardest task.", True),
        ("Freeze leftover dough in a sealed bag.", False),
        ("Sourdough needs flour, water, time and patience.", True),
        ("Sourdough needs flour, water, time and a warm cozy spot.", False),
        ("Amazing bread takes three days.", False),
        ("Leave the starter on the counter overnight.", True),
    ],
)

instruction(
    "Do not use any digits; write every number out in words",
    [],
    [
        r'''
        def evaluate(response):
            return not any(c.isdigit() for c in response)
        ''',
        r'''
        import re

        def evaluate(response):
            return re.search(r"[0-9]", response) is None
        ''',
    ],
    [
        ("Stretch for thirty seconds per muscle and repeat twice.", True),
        ("A seven-year-old party needs about two hours, one cake and twelve dinosaur masks.",
         True),
        ("Save one hundred euros a month and in ten years you will have far more than twelve "
         "thousand.", True),
        ("Stretch for 30 seconds per muscle and repeat twice.", False),
        ("A party for a 7-year-old needs about two hours and one cake.", False),
        ("Save one hundred euros a month at a 5% rate.", False),
    ],
)

instruction(
    "Keep every sentence shorter than 12 words",
    [],
    [
        r'''
        import re

        def evaluate(response):
            sentences = [s for s in re.split(r"[.!?]+(?:\s+|$)", response.strip()) if re.search(r"[A-Za-z0-9]", s)]
            return bool(sentences) and all(
                len([w for w in s.split() if re.search(r"[A-Za-z0-9]", w)]) < 12 for s in sentences
            )
        ''',
        r'''
        import re

        def evaluate(response):
            text = response.strip()
            if not re.search(r"[A-Za-z0-9]", text):
                return False
            for sentence in re.split(r"(?<=[.!?])\s+", text):
                words = re.findall(r"\S*[A-Za-z0-9]\S*", sentence)
                if len(words) >= 12:
                    return False
            return True
        ''',
    ],
    [
        ("Gears change how far you travel per pedal stroke. Low gears make hills easier. You "
         "go slower but push less.", True),
        ("Shift down before the slope. Keep a steady rhythm!", True),
        ("A small chainring and a big rear cog make climbing easier.", True),
        ("A small front ring and a big rear cog make climbing easier.", False),
        ("Low gears help. You pedal more often, but each turn of the pedals needs much less "
         "force from your legs.", False),
        ("Shift down early. Stay seated. Keep the cadence steady and breathe calmly as the "
         "road gets steeper.", False),
    ],
)

instruction(
    "Form your reply entirely out of questions",
    [],
    [
        r'''
        import re

        def evaluate(response):
            text = response.strip()
            runs = re.findall(r"[.!?]+(?=\s|$)", text)
            return text.endswith("?") and bool(runs) and all(set(r) == {"?"} for r in runs)
        ''',
        r'''
        import re

        def evaluate(response):
            segments = re.split(r"(?<=[.!?])\s+", response.strip())
            for seg in segments:
                body = seg.rstrip("?")
                if body == seg or body.endswith((".", "!")):
                    return False
            return any(c.isalnum() for c in response)
        ''',
    ],
    [
        ("Have you asked about the dog's health? Does it get on with cats? How much exercise "
         "does it need?", True),
        ("What does the shelter know about its past?", True),
        ("Is the dog house-trained?\nHas it lived with children?", True),
        ("Ask about its health. Does it get on with cats?", False),
        ("Does it get on with cats? Ask about exercise too.", False),
        ("Has it lived with children?! Is it house-trained?", False),
    ],
)

instruction(
    "Write it as a telegram: no periods, and the word STOP wherever a sentence ends",
    [],
    [
        r'''
        import re

        def evaluate(response):
            text = response.strip()
            return "." not in text and re.search(r"\bSTOP$", text) is not None
        ''',
        r'''
        def evaluate(response):
            words = response.split()
            return bool(words) and words[-1] == "STOP" and "." not in response
        ''',
    ],
    [
        ("BASIL NEEDS SUN STOP WATER LIGHTLY STOP", True),
        ("Arrive Lisbon Saturday STOP visit Belem and Alfama STOP eat pasteis de nata STOP",
         True),
        ("Thank you for the plants STOP\nThey look great STOP", True),
        ("Arrived safely. STOP", False),
        ("Basil needs sun STOP water lightly STOP love Mum", False),
        ("Basil needs sun stop water it lightly stop", False),
        ("Keep the basil warm and bright and water it lightly", False),
    ],
)

instruction(
    "Answer with a story of exactly six words",
    ["length_constraints:number_words"],
    [
        r'''
        def evaluate(response):
            return len([t for t in response.split() if any(c.isalnum() for c in t)]) == 6
        ''',
        r'''
        import re

        def evaluate(response):
            return len(re.findall(r"\S*[A-Za-z0-9]\S*", response)) == 6
        ''',
    ],
    [
        ("Missed the train, found a friend.", True),
        ("Dinosaur cake. Seven candles. Loud roars.", True),
        ("Basil died. Winter won. Replanted anyway.", True),
        ("Missed the train, but found a friend.", False),
        ("Dinosaur cake, seven candles.", False),
        ("Basil died in winter — replanted in spring.", False),
    ],
)

instruction(
    "Put each sentence on its own line",
    [],
    [
        r'''
        import re

        def evaluate(response):
            lines = [line.strip() for line in response.splitlines() if line.strip()]
            if not lines:
                return False
            for line in lines:
                if not re.search(r"[.!?][\"')]*$", line):
                    return False
                if re.search(r"[.!?]\s+\S", line):
                    return False
            return True
        ''',
        r'''
        def evaluate(response):
            lines = [line.strip() for line in response.split("\n") if line.strip()]
            for line in lines:
                core = line.rstrip("\"')")
                if not core or core[-1] not in ".!?":
                    return False
                body = core.rstrip(".!?")
                for i, c in enumerate(body):
                    if c in ".!?" and i + 1 < len(body) and body[i + 1] in " \t":
                        return False
            return len(lines) > 0
        ''',
    ],
    [
        ("Rain forms when water vapour cools.\nThe droplets join into clouds.\nHeavy drops "
         "fall back to the ground.", True),
        ("Water evaporates from the sea.\nIt falls again as rain!", True),
        ("The sun heats the water.", True),
        ("Water evaporates from the sea. It falls again as rain.", False),
        ("Water evaporates from the sea and\nfalls again as rain.", False),
        ("The sun heats the water.\nClouds form. Rain falls.", False),
    ],
)

instruction(
    "End every sentence with an exclamation mark",
    [],
    [
        r'''
        import re

        def evaluate(response):
            text = response.strip()
            ends = re.findall(r"[.!?]+(?=\s|$)", text)
            return bool(ends) and text.endswith("!") and all(e.strip("!") == "" for e in ends)
        ''',
        r'''
        import re

        def evaluate(response):
            sentences = [s for s in re.split(r"(?<=[.!?])\s+", response.strip()) if s]
            if not sentences:
                return False
            for s in sentences:
                tail = re.search(r"[.!?]+$", s)
                if tail is None or set(tail.group()) != {"!"}:
                    return False
            return True
        ''',
    ],
    [
        ("Dinosaur dig in the sandbox! Fossil cake! Roar contest for the grown-ups!", True),
        ("This party will be a blast!", True),
        ("Hide plastic eggs around the garden!! Give every child a paper dinosaur mask!",
         True),
        ("Dinosaur dig in the sandbox! Fossil cake. Roar contest!", False),
        ("Dinosaur dig in the sandbox! Who doesn't love a fossil cake?", False),
        ("Dinosaur dig in the sandbox! Then a fossil cake", False),
    ],
)


# ---------------------------------------------------------------- checks and output

def imports_of(source):
    names = set()
    for m in re.finditer(r"^\s*import\s+([\w., ]+)$", source, re.MULTILINE):
        names.update(n.strip().split(".")[0] for n in m.group(1).split(","))
    for m in re.finditer(r"^\s*from\s+(\w+)", source, re.MULTILINE):
        names.add(m.group(1))
    return names


def run_function(source, text):
    namespace = {"__name__": "__evaluate__"}
    exec(compile(source, "<evaluate>", "exec"), namespace)
    result = namespace["evaluate"](text)
    if not isinstance(result, bool):
        raise TypeError(f"evaluate returned {type(result).__name__}, not bool")
    return result


def normalise(text):
    return " ".join(text.lower().split())


def instruction_sentences(text):
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def ifeval_prompts(path):
    with open(path, encoding="utf-8") as f:
        return [normalise(json.loads(line)["prompt"]) for line in f if line.strip()]


def check_shape(index, item):
    """House rules for one instruction; returns a list of problems."""
    problems = []
    text = item["instruction"]
    if text != text.strip() or text.endswith("."):
        problems.append("the instruction must be trimmed and not end with '.'"
                        " (the training prompt adds one)")
    if not 2 <= len(item["funcs"]) <= 3:
        problems.append(f"{len(item['funcs'])} functions, need 2 or 3")
    if len(set(item["funcs"])) != len(item["funcs"]):
        problems.append("two functions are identical")
    for source in item["funcs"]:
        extra = imports_of(source) - ALLOWED_IMPORTS
        if extra:
            problems.append(f"imports outside {sorted(ALLOWED_IMPORTS)}: {sorted(extra)}")
    cases = item["cases"]
    if not 6 <= len(cases) <= 8:
        problems.append(f"{len(cases)} cases, need 6 to 8")
    trues = sum(1 for _, out in cases if out)
    if trues < 3 or len(cases) - trues < 3:
        problems.append(f"{trues} true and {len(cases) - trues} false cases, need 3 of each")
    if len({inp for inp, _ in cases}) != len(cases):
        problems.append("repeated case input")
    return [f"instruction {index + 1} ({text!r}): {p}" for p in problems]


def build_records():
    """Runs every function on every case; returns (records, problems)."""
    records, problems = [], []
    for index, item in enumerate(INSTRUCTIONS):
        problems += check_shape(index, item)
        verdicts = []
        for f_index, source in enumerate(item["funcs"]):
            row = []
            for c_index, (text, expected) in enumerate(item["cases"]):
                try:
                    got = run_function(source, text)
                except Exception as e:  # a broken hand-written function is a problem to report
                    got = None
                    problems.append(f"instruction {index + 1} function {f_index + 1} case "
                                    f"{c_index + 1}: raised {type(e).__name__}: {e}")
                if got is not None and got != expected:
                    problems.append(f"instruction {index + 1} ({item['instruction']!r}) function "
                                    f"{f_index + 1} says {got} on case {c_index + 1} (expected "
                                    f"{expected}): {text!r}")
                row.append(got)
            verdicts.append(row)
        cases = item["cases"]
        funcs = [
            {"source": source,
             "accuracy": sum(1 for (_, out), got in zip(cases, row) if got == out) / len(cases)}
            for source, row in zip(item["funcs"], verdicts)
        ]
        kept_cases = [
            {"input": text, "output": out,
             "pass_rate": sum(1 for row in verdicts if row[c] is True) / len(verdicts)}
            for c, (text, out) in enumerate(cases)
        ]
        records.append({"id": f"qs{index + 1:03d}", "instruction": item["instruction"],
                        "ifeval_types": item["ifeval_types"],
                        "funcs": funcs, "cases": kept_cases})
    seen = set()
    for item in INSTRUCTIONS:
        key = normalise(item["instruction"])
        if key in seen:
            problems.append(f"instruction {item['instruction']!r} appears twice")
        seen.add(key)
    return records, problems


def unknown_ifeval_types(path):
    with open(path, encoding="utf-8") as f:
        known = {i for line in f if line.strip() for i in json.loads(line)["instruction_id_list"]}
    return [f"instruction {item['instruction']!r}: {t!r} is not an IFEval instruction id"
            for item in INSTRUCTIONS for t in item["ifeval_types"] if t not in known]


def ifeval_overlaps(path):
    prompts = ifeval_prompts(path)
    found = []
    for item in INSTRUCTIONS:
        for sentence in instruction_sentences(item["instruction"]):
            needle = normalise(sentence)
            if any(needle in prompt for prompt in prompts):
                found.append(f"instruction sentence {sentence!r} occurs in an IFEval prompt")
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--ifeval", default=DEFAULT_IFEVAL,
                        help="IFEval input_data.jsonl; no instruction sentence may occur in it")
    args = parser.parse_args()

    records, problems = build_records()
    if os.path.exists(args.ifeval):
        problems += ifeval_overlaps(args.ifeval) + unknown_ifeval_types(args.ifeval)
    else:
        print(f"warning: {args.ifeval} not found; the IFEval overlap and type checks were skipped",
              file=sys.stderr)
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        sys.exit(f"refusing to write {args.out}: {len(problems)} problem(s)")

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    partial = args.out + ".partial"
    with open(partial, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(partial, args.out)
    n_funcs = sum(len(r["funcs"]) for r in records)
    n_cases = sum(len(r["cases"]) for r in records)
    print(f"wrote {args.out}: {len(records)} instructions, {n_funcs} functions, {n_cases} cases")


if __name__ == "__main__":
    main()
